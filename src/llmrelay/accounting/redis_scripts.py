"""The Lua run by :class:`~llmrelay.accounting.redis_limits.RedisLimiter`.

The rules are written once, as Lua functions in :data:`_LIBRARY`, and each script is that
library plus a loop over the items of one batch. An item is one ARGV string of fields
separated by spaces, ``_`` standing for none: redis-py spends about a microsecond of CPU
encoding each argument, and an item has up to nine fields.
"""

from __future__ import annotations

from llmrelay.accounting.limits import WINDOW_MS

_LIBRARY = (
    f"local W = {WINDOW_MS}\n"
    + """
local function fields(s)
  local f, i = {}, 0
  for w in string.gmatch(s, '%S+') do
    i = i + 1
    if w ~= '_' then f[i] = w end
  end
  return f
end

-- Money: two base-1e9 limbs {hi, lo}, since doubles are exact only up to 2**53.
local B = 1000000000
local function big(s)
  s = tostring(s or '0')
  local neg = string.sub(s, 1, 1) == '-'
  if neg then s = string.sub(s, 2) end
  local n = string.len(s)
  local hi, lo = 0, tonumber(s)
  if n > 9 then
    hi = tonumber(string.sub(s, 1, n - 9))
    lo = tonumber(string.sub(s, n - 8))
  end
  if neg then
    if lo > 0 then return {-hi - 1, B - lo} end
    return {-hi, 0}
  end
  return {hi, lo}
end
local function add(a, b)
  local hi, lo = a[1] + b[1], a[2] + b[2]
  if lo >= B then hi, lo = hi + 1, lo - B end
  return {hi, lo}
end
local function cmp(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] and -1 or 1 end
  if a[2] ~= b[2] then return a[2] < b[2] and -1 or 1 end
  return 0
end

-- Budgets. `k` is the index in KEYS of a key's hash, then its held set, the user's hash and
-- the user's held set.
local function release(hash, amount)
  if amount == '0' then return end
  redis.call('HINCRBY', hash, 'reserved', '-' .. amount)
  if big(redis.call('HGET', hash, 'reserved'))[1] < 0 then
    redis.call('HSET', hash, 'reserved', 0)
  end
end
local function lapse(hash, held, now)
  local gone = redis.call('ZRANGEBYSCORE', held, '-inf', now)
  for _, member in ipairs(gone) do
    release(hash, string.match(member, ':(%d+)$'))
  end
  if #gone > 0 then redis.call('ZREMRANGEBYSCORE', held, '-inf', now) end
end
local function learn(hash, spent)
  redis.call('HSETNX', hash, 'spent', spent)
  redis.call('HSETNX', hash, 'reserved', 0)
  if cmp(big(spent), big(redis.call('HGET', hash, 'spent'))) > 0 then
    redis.call('HSET', hash, 'spent', spent)
  end
  local state = redis.call('HMGET', hash, 'spent', 'reserved')
  return add(big(state[1]), big(state[2]))
end
-- Hold `amount` (credit, funded nil: no limit). Returns 0 (held), 1 (key credit short) or 2
-- (user balance short).
local function reserve(k, amount, credit, key_spent, funded, user_spent, now, deadline, member,
                       ttl)
  local need = big(amount)
  lapse(KEYS[k], KEYS[k + 1], now)
  lapse(KEYS[k + 2], KEYS[k + 3], now)
  local key_used = learn(KEYS[k], key_spent)
  local user_used = learn(KEYS[k + 2], user_spent)
  local result = 0
  if credit and cmp(add(key_used, need), big(credit)) > 0 then
    result = 1
  elseif funded and cmp(add(user_used, need), big(funded)) > 0 then
    result = 2
  else
    for i = k, k + 2, 2 do
      redis.call('HINCRBY', KEYS[i], 'reserved', amount)
      redis.call('ZADD', KEYS[i + 1], deadline, member)
    end
  end
  for i = k, k + 3 do redis.call('PEXPIRE', KEYS[i], ttl) end
  return result
end
-- Release a reservation (only if still held: exactly once) and count its actual cost.
local function settle(k, member, amount, cost, ttl)
  for i = k, k + 2, 2 do
    if redis.call('ZREM', KEYS[i + 1], member) == 1 then release(KEYS[i], amount) end
    if redis.call('EXISTS', KEYS[i]) == 1 then
      if cost ~= '0' then redis.call('HINCRBY', KEYS[i], 'spent', cost) end
      redis.call('PEXPIRE', KEYS[i], ttl)
      redis.call('PEXPIRE', KEYS[i + 1], ttl)
    end
  end
end

-- Token buckets; levels are below 2**53, so plain numbers.
local function level(key, limit, now)
  local v = redis.call('HMGET', key, 'level', 'at')
  local lvl, at = tonumber(v[1]), tonumber(v[2])
  if lvl == nil then return limit * W end
  if now > at then lvl = lvl + (now - at) * limit end
  if lvl > limit * W then lvl = limit * W end
  return lvl
end
local function save(key, lvl, limit, now)
  redis.call('HSET', key, 'level', string.format('%d', lvl), 'at', string.format('%d', now),
             'limit', limit)
  -- Gone when it would be full again: nothing is lost. (A limit of 0 never refills; an error
  -- here would fail every item of the batch.)
  local full = 0
  if limit > 0 then full = math.ceil((limit * W - lvl) / limit) end
  redis.call('PEXPIRE', key, full + 1000)
end
local function wait(lvl, need, limit)
  if lvl >= need or limit <= 0 then return 0 end
  return math.ceil((need - lvl) / limit)
end
-- Take one request and `tokens` from a key's buckets (rpm, tpm nil: no limit) unless either
-- must wait. Returns the levels (-1: no limit) and the waits (ms).
local function rate(req, tok, now, rpm, tpm, tokens)
  local rl, tl, rw, tw = -1, -1, 0, 0
  if rpm then rl = level(req, rpm, now); rw = wait(rl, W, rpm) else redis.call('DEL', req) end
  if tpm then
    tl = level(tok, tpm, now); tw = wait(tl, tokens * W, tpm)
  else
    redis.call('DEL', tok)
  end
  if rw == 0 and tw == 0 then
    if rpm then rl = rl - W; save(req, rl, rpm, now) end
    if tpm then tl = tl - tokens * W; save(tok, tl, tpm, now) end
  end
  return rl, tl, rw, tw
end
-- Correct a token estimate; the level stays within one minute's allowance either way.
local function add_tokens(tok, now, delta)
  local limit = tonumber(redis.call('HGET', tok, 'limit'))
  if limit == nil then return end
  local lvl = level(tok, limit, now) - delta * W
  if lvl < -limit * W then lvl = -limit * W end
  if lvl > limit * W then lvl = limit * W end
  save(tok, lvl, limit, now)
end
"""
)

ADMIT_LUA = (
    _LIBRARY
    + """
-- KEYS per item: request bucket, token bucket, key, key:held, user, user:held. ARGV: now
-- (ms), reservation deadline (ms), state ttl (ms), then per item "rpm tpm tokens
-- amount key_credit key_spent funded user_spent member": tokens none, no rate check; amount
-- none, no reservation. Items run in order; each answers "rl,tl,rw,tw,money" (money: 0 held or
-- not asked, 1 key short, 2 user short; nothing is reserved when a bucket must wait).
local now, deadline, ttl = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local out = {}
for n = 4, #ARGV do
  local f, k = fields(ARGV[n]), (n - 4) * 6 + 1
  local rl, tl, rw, tw = -1, -1, 0, 0
  if f[3] then
    rl, tl, rw, tw = rate(KEYS[k], KEYS[k + 1], now, tonumber(f[1]), tonumber(f[2]),
                          tonumber(f[3]))
  end
  local money = 0
  if f[4] and rw == 0 and tw == 0 then
    money = reserve(k + 2, f[4], f[5], f[6], f[7], f[8], ARGV[1], deadline, f[9], ttl)
  end
  out[n - 3] = string.format('%d,%d,%d,%d,%d', rl, tl, rw, tw, money)
end
return table.concat(out, ' ')
"""
)

FINISH_LUA = (
    _LIBRARY
    + """
-- KEYS per item: token bucket, key, key:held, user, user:held. ARGV: now (ms), state ttl
-- (ms), then per item "member amount cost token_delta" (member none: nothing to settle). Each
-- item answers "0".
local now, ttl = tonumber(ARGV[1]), ARGV[2]
local out = {}
for n = 3, #ARGV do
  local f, k = fields(ARGV[n]), (n - 3) * 5 + 1
  if f[1] then settle(k + 1, f[1], f[2], f[3], ttl) end
  if f[4] ~= '0' then add_tokens(KEYS[k], now, tonumber(f[4])) end
  out[n - 2] = '0'
end
return table.concat(out, ' ')
"""
)

FORGET_LUA = """
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('HSET', KEYS[i], 'spent', 0) end
end
return 0
"""
