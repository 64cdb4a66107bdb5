"""The Lua run by :class:`~llmrelay.accounting.redis_limits.RedisLimiter`.

The rules are written once, as Lua functions in :data:`_LIBRARY`, and :data:`STEP_LUA` is that
library plus a loop over the items of one batch: admissions and settlements, in the order they
were made, so a settlement rides along with the admissions of its turn instead of costing a
script call of its own. An item is one ARGV string of fields separated by spaces, ``_``
standing for none: redis-py spends about a microsecond of CPU encoding each argument, and an
item has up to twelve fields. For the same reason each key name
is sent once per batch: KEYS holds groups, a key's (request bucket, token bucket, hash, held
set) and a user's (hash, held set), and an item's first two fields are the positions in KEYS
where its key's group and its user's group begin.
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

-- Budgets: `kh`, `kz` are a key's hash and held set, `uh`, `uz` its user's.
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
local function reserve(kh, kz, uh, uz, amount, credit, key_spent, funded, user_spent, now,
                       deadline, member, ttl)
  local need = big(amount)
  lapse(kh, kz, now)
  lapse(uh, uz, now)
  local key_used = learn(kh, key_spent)
  local user_used = learn(uh, user_spent)
  local result = 0
  if credit and cmp(add(key_used, need), big(credit)) > 0 then
    result = 1
  elseif funded and cmp(add(user_used, need), big(funded)) > 0 then
    result = 2
  else
    for _, pair in ipairs({{kh, kz}, {uh, uz}}) do
      redis.call('HINCRBY', pair[1], 'reserved', amount)
      redis.call('ZADD', pair[2], deadline, member)
    end
  end
  for _, name in ipairs({kh, kz, uh, uz}) do redis.call('PEXPIRE', name, ttl) end
  return result
end
-- Release a reservation (only if still held: exactly once) and count its actual cost.
local function settle(kh, kz, uh, uz, member, amount, cost, ttl)
  for _, pair in ipairs({{kh, kz}, {uh, uz}}) do
    local hash, held = pair[1], pair[2]
    if redis.call('ZREM', held, member) == 1 then release(hash, amount) end
    if redis.call('EXISTS', hash) == 1 then
      if cost ~= '0' then redis.call('HINCRBY', hash, 'spent', cost) end
      redis.call('PEXPIRE', hash, ttl)
      redis.call('PEXPIRE', held, ttl)
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

-- Leases (accounting/redis_leases.py): what one process holds of a key's buckets and money.
-- Give back bucket units a lease took (negative: take more), within the bucket's bounds.
local function give_back(key, units, limit, now)
  if units == 0 then return end
  local lvl = level(key, limit, now) + units
  if lvl > limit * W then lvl = limit * W end
  if lvl < -limit * W then lvl = -limit * W end
  save(key, lvl, limit, now)
end
-- Renew a lease: release its member, count what it spent, give back the units it returns, and
-- grant what it asks for if that leaves at least as much as it takes (all or nothing); the
-- money it keeps (requests under way, what it has not used) stays held either way. `f` is the
-- item's fields (see STEP_LUA). Answers "granted,rl,tl".
local function lease(f, req, tok, kh, kz, uh, uz, now, deadline, ttl)
  local rpm, tpm, money = tonumber(f[15]), tonumber(f[16]), f[10]
  if money then
    if f[4] then
      for _, pair in ipairs({{kh, kz}, {uh, uz}}) do
        if redis.call('ZREM', pair[2], f[4]) == 1 then release(pair[1], f[5]) end
      end
    end
    if f[6] ~= '0' then
      for _, hash in ipairs({kh, uh}) do
        if redis.call('EXISTS', hash) == 1 then redis.call('HINCRBY', hash, 'spent', f[6]) end
      end
    end
  end
  if rpm then give_back(req, tonumber(f[7]), rpm, now) end
  if tpm then give_back(tok, tonumber(f[8]), tpm, now) end
  local asked, asked_tokens = tonumber(f[13]), tonumber(f[14])
  local granted = true
  local rl, tl = -1, -1
  if rpm then
    rl = level(req, rpm, now)
    granted = granted and (asked == 0 or rl >= 2 * asked)
  end
  if tpm then
    tl = level(tok, tpm, now)
    granted = granted and (asked_tokens == 0 or tl >= 2 * asked_tokens)
  end
  if money then
    lapse(kh, kz, ARGV[1])  -- (the time as sent: a number would be formatted as a float)
    lapse(uh, uz, ARGV[1])
    local key_used = learn(kh, f[18])
    local user_used = learn(uh, f[20])
    local want = big(f[12])
    if f[17] and cmp(add(key_used, want), big(f[17])) > 0 then granted = false end
    if f[19] and cmp(add(user_used, want), big(f[19])) > 0 then granted = false end
  end
  if granted then
    if rpm and asked > 0 then rl = rl - asked; save(req, rl, rpm, now) end
    if tpm and asked_tokens > 0 then tl = tl - asked_tokens; save(tok, tl, tpm, now) end
  end
  if money then
    local amount = money
    if granted then amount = f[11] end
    if amount ~= '0' then
      for _, pair in ipairs({{kh, kz}, {uh, uz}}) do
        redis.call('HINCRBY', pair[1], 'reserved', amount)
        redis.call('ZADD', pair[2], deadline, f[9] .. ':' .. amount)
      end
    end
    for _, name in ipairs({kh, kz, uh, uz}) do redis.call('PEXPIRE', name, ttl) end
  end
  return string.format('%d,%d,%d', granted and 1 or 0, rl, tl)
end
"""
)

STEP_LUA = (
    _LIBRARY
    + """
-- ARGV: now (ms), reservation deadline (ms), state ttl (ms), then the items, in the order
-- they were made, each "key_group user_group" and then its kind and fields:
--   admit:  "a rpm tpm tokens amount key_credit key_spent funded user_spent member": tokens
--           none, no rate check; amount none, no reservation. It answers "rl,tl,rw,tw,money"
--           (money: 0 held or not asked, 1 key short, 2 user short; nothing is reserved when
--           a bucket must wait).
--   finish: "f member amount cost token_delta" (member none: nothing to settle, and the user
--           group is none too; the key group is that of the key whose tokens are corrected,
--           the reservation's key is the same key). It answers "0".
--   lease:  "l old_member old_amount spent returned_requests returned_tokens lease_id kept
--           granted_amount wanted_amount requests tokens rpm tpm key_credit key_spent funded
--           user_spent": bucket units given back and asked for (requests, tokens); the money
--           kept held, granted_amount (kept + the money asked for) and wanted_amount (kept +
--           twice that), none when the key's money is not limited. It answers
--           "granted,rl,tl" (granted 1 or 0; the levels after it, -1: no limit).
local now, deadline, ttl = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local out = {}
for n = 4, #ARGV do
  local f = fields(ARGV[n])
  local k, u = tonumber(f[1]), tonumber(f[2])
  if f[3] == 'l' then
    out[n - 3] = lease(f, KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[u], KEYS[u + 1],
                       now, deadline, ttl)
  elseif f[3] == 'f' then
    if f[4] then
      settle(KEYS[k + 2], KEYS[k + 3], KEYS[u], KEYS[u + 1], f[4], f[5], f[6], ttl)
    end
    if f[7] ~= '0' then add_tokens(KEYS[k + 1], now, tonumber(f[7])) end
    out[n - 3] = '0'
  else
    local rl, tl, rw, tw = -1, -1, 0, 0
    if f[6] then
      rl, tl, rw, tw = rate(KEYS[k], KEYS[k + 1], now, tonumber(f[4]), tonumber(f[5]),
                            tonumber(f[6]))
    end
    local money = 0
    if f[7] and rw == 0 and tw == 0 then
      money = reserve(KEYS[k + 2], KEYS[k + 3], KEYS[u], KEYS[u + 1], f[7], f[8], f[9], f[10],
                      f[11], ARGV[1], deadline, f[12], ttl)
    end
    out[n - 3] = string.format('%d,%d,%d,%d,%d', rl, tl, rw, tw, money)
  end
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
