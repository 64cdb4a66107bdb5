// The console playground: a conversation streamed from /console/playground/chat, which answers
// as the chosen API key with the API's own server-sent events (chat.completion.chunk).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const settings = $("pg-settings");
  if (!settings) return; // no usable key: the page says so
  const choices = JSON.parse($("pg-choices").textContent);
  const keySelect = $("pg-key");
  const modelSelect = $("pg-model");
  const message = $("pg-message");
  const role = $("pg-role");
  const sendButton = $("pg-send");
  const addButton = $("pg-add");
  const stopButton = $("pg-stop");
  const log = $("pg-log");
  const status = $("pg-status");

  let history = []; // what the model sees: {role, content}, reasoning left out
  let running = null; // the AbortController of the answer being streamed

  // --- settings -------------------------------------------------------------------------

  function showModels() {
    const choice = choices.find((c) => c.name === keySelect.value);
    const models = choice ? choice.models : [];
    const current = modelSelect.value;
    modelSelect.replaceChildren();
    for (const name of models) modelSelect.append(new Option(name, name));
    if (!models.length) modelSelect.append(new Option("No model this key may use", ""));
    if (models.includes(current)) modelSelect.value = current;
    updateButtons();
  }
  keySelect.addEventListener("change", showModels);
  settings.addEventListener("submit", (event) => event.preventDefault()); // Enter in a field

  function updateButtons() {
    const busy = running !== null;
    sendButton.disabled = busy || !modelSelect.value;
    addButton.disabled = busy;
    stopButton.disabled = !busy;
    log.setAttribute("aria-busy", String(busy));
  }

  // --- the conversation on screen -------------------------------------------------------

  function bubble(kind, label) {
    log.querySelector(".pg-empty")?.remove();
    const article = document.createElement("article");
    article.className = `pg-msg ${kind}`;
    const who = document.createElement("div");
    who.className = "pg-who";
    who.textContent = label;
    article.append(who);
    log.append(article);
    return article;
  }

  // Keep the newest text in sight, unless the reader scrolled up to read something else.
  function follow(change) {
    const atEnd = log.scrollHeight - log.scrollTop - log.clientHeight < 48;
    change();
    if (atEnd) log.scrollTop = log.scrollHeight;
  }

  function textBlock(article, text) {
    const div = document.createElement("div");
    div.className = "pg-text";
    div.textContent = text;
    article.append(div);
    return div;
  }

  // Reasoning, apart from the answer and folded away on request.
  function reasoningBlock(article, text, open) {
    const details = document.createElement("details");
    details.className = "pg-reasoning";
    details.open = open;
    details.hidden = !text;
    const summary = document.createElement("summary");
    summary.textContent = "Reasoning";
    const thought = document.createElement("div");
    thought.className = "pg-reasoning-text";
    thought.textContent = text;
    details.append(summary, thought);
    article.append(details);
    return { details, thought };
  }

  const THINK = /^\s*<think>([\s\S]*?)<\/think>\s*/;

  // A message put into the conversation by hand; an example answer's <think> part is shown
  // as reasoning, as the model's would be (the model is sent the text as written).
  function showMessage(turn) {
    const label = turn.role === "user" ? "You" : "Assistant";
    const article = bubble(turn.role, label);
    const think = turn.role === "assistant" ? THINK.exec(turn.content) : null;
    if (think) reasoningBlock(article, think[1].trim(), false);
    textBlock(article, think ? turn.content.slice(think[0].length) : turn.content);
    log.scrollTop = log.scrollHeight;
    return article;
  }

  // An answer being streamed: a collapsible reasoning block (shown once reasoning arrives),
  // the answer text, and a line for usage or what went wrong.
  function answerView() {
    const article = bubble("assistant", "Assistant");
    article.dataset.state = "streaming";
    const { details, thought } = reasoningBlock(article, "", true);
    const content = textBlock(article, "");
    const meta = document.createElement("p");
    meta.className = "pg-meta";
    article.append(meta);
    let text = "";
    let reasoning = "";
    return {
      article,
      get text() { return text; },
      addReasoning(part) {
        reasoning += part;
        follow(() => {
          details.hidden = false;
          thought.textContent = reasoning.trim();
        });
      },
      addText(part) {
        text += part;
        follow(() => {
          content.textContent = text.replace(/^\s+/, ""); // the newline after </think>
        });
      },
      end(state, note) {
        article.dataset.state = state;
        if (note) follow(() => { meta.textContent = note; });
      },
      fail(words) {
        article.dataset.state = "failed";
        const error = document.createElement("p");
        error.className = "error";
        error.setAttribute("role", "alert");
        error.textContent = words;
        follow(() => article.append(error));
      },
    };
  }

  // --- talking to the server ------------------------------------------------------------

  function formBody() {
    const form = new FormData(settings);
    form.set("messages", JSON.stringify(history));
    return new URLSearchParams(form);
  }

  // Words for a refused request: the API's JSON error, or the console's error page.
  async function refusal(response) {
    const type = response.headers.get("content-type") || "";
    try {
      if (type.includes("json")) {
        const data = await response.json();
        if (data.error && data.error.message) return data.error.message;
      } else if (type.includes("html")) {
        const doc = new DOMParser().parseFromString(await response.text(), "text/html");
        const error = doc.querySelector(".error");
        if (error) return error.textContent.trim();
      }
    } catch (err) {
      // fall through to the status line
    }
    return `The server refused the request (HTTP ${response.status}).`;
  }

  // Feed each server-sent event's data to onData; true once [DONE] arrived.
  async function readEvents(response, onData) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return false;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = event
          .split("\n")
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""))
          .join("\n");
        if (data === "[DONE]") return true;
        if (data) onData(JSON.parse(data));
      }
    }
  }

  function usageNote(usage) {
    if (!usage) return "";
    let note = `${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens`;
    const reasoning = usage.completion_tokens_details?.reasoning_tokens;
    if (reasoning) note += ` (${reasoning} reasoning)`;
    return note;
  }

  async function run(addedTurn, addedView) {
    const turns = history; // "New chat" while streaming starts another list: leave it be
    const view = answerView();
    log.scrollTop = log.scrollHeight;
    running = new AbortController();
    updateButtons();
    status.textContent = `Streaming from ${modelSelect.value}…`;
    let usage = null;
    let streamError = null;
    try {
      const response = await fetch("/console/playground/chat", {
        method: "POST",
        body: formBody(),
        headers: { Accept: "text/event-stream" },
        signal: running.signal,
      });
      if (!response.ok || !(response.headers.get("content-type") || "").includes("event-stream")) {
        throw new Refused(await refusal(response));
      }
      const done = await readEvents(response, (data) => {
        if (data.error) {
          streamError = data.error.message || "The answer failed.";
          return;
        }
        if (data.usage) usage = data.usage;
        const delta = data.choices && data.choices[0] && data.choices[0].delta;
        if (!delta) return;
        if (delta.reasoning_content) view.addReasoning(delta.reasoning_content);
        if (delta.content) view.addText(delta.content);
      });
      if (streamError) throw new Refused(streamError);
      if (!done) throw new Refused("The answer stopped before its end; the connection closed.");
      turns.push({ role: "assistant", content: view.text });
      view.end("done", usageNote(usage));
      status.textContent = "Done.";
    } catch (err) {
      if (err.name === "AbortError") {
        if (view.text) turns.push({ role: "assistant", content: view.text });
        view.end("stopped", "Stopped.");
        if (turns === history) status.textContent = "Stopped."; // not after "New chat"
      } else {
        const words = err instanceof Refused ? err.message : `The request failed: ${err.message}`;
        view.fail(words);
        status.textContent = "The request failed; see the message above.";
        if (view.text) {
          turns.push({ role: "assistant", content: view.text }); // the part that arrived
        } else if (addedTurn && turns[turns.length - 1] === addedTurn) {
          // Nothing came back: take the message out again so it can be sent anew.
          turns.pop();
          addedView.classList.add("not-sent");
          addedView.querySelector(".pg-who").textContent += " (not sent)";
          if (!message.value) message.value = addedTurn.content;
        }
      }
    } finally {
      running = null;
      updateButtons();
    }
  }

  class Refused extends Error {}

  // --- the composer ---------------------------------------------------------------------

  function add(roleName) {
    const text = message.value;
    if (!text.trim()) return null;
    const turn = { role: roleName, content: text };
    history.push(turn);
    const view = showMessage(turn);
    message.value = "";
    return { turn, view };
  }

  function send() {
    if (running || !modelSelect.value) return;
    const added = add(role.value);
    const last = history[history.length - 1];
    if (!added && (!last || last.role === "assistant")) {
      status.textContent = "Write a message first.";
      message.focus();
      return;
    }
    run(added && added.turn, added && added.view);
    message.focus();
  }

  $("pg-composer").addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  addButton.addEventListener("click", () => {
    if (add(role.value)) status.textContent = `Added as ${role.value}; no reply asked for.`;
    message.focus();
  });
  stopButton.addEventListener("click", () => running && running.abort());
  message.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  $("pg-new").addEventListener("click", () => {
    if (running) running.abort();
    history = [];
    const empty = document.createElement("p");
    empty.className = "pg-empty";
    empty.textContent = "No messages yet. Write one below; Enter sends it.";
    log.replaceChildren(empty);
    status.textContent = "New chat.";
    message.focus();
  });

  showModels();
})();
