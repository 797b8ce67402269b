// The model explorer page (@sec-architecture-explorer): renders the precomputed data in #explorer-data.
// Every string that comes from the data or a server is inserted as text (textContent), never as HTML.
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("explorer-data").textContent);
  const $ = (id) => document.getElementById(id);
  const state = { prompt: 0, pos: 0, layer: 0, head: 0 };

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  const piece = (id) => (DATA.vocab[String(id)] || ["?" + id])[0];
  const quoted = (id) => "\u2018" + piece(id) + "\u2019";
  const fmtP = (p) => String(p);  // probabilities are stored rounded to 3 significant digits
  const fmtW = (w) => (w / DATA.attn_scale).toFixed(3);
  function shade(cell, fraction) {  // background shade for a value in [0, 1], with readable text on dark cells
    cell.style.backgroundColor = "rgba(var(--heat), " + Math.min(1, Math.max(0, fraction)).toFixed(3) + ")";
    if (fraction > 0.55) cell.classList.add("dark");
  }
  const current = () => DATA.prompts[state.prompt];

  // ------------------------------------------------------------------------------------------ model and prompts
  function describeModel() {
    const m = DATA.model;
    const heads = m.n_head + " heads" + (m.n_kv_head !== m.n_head ? " (" + m.n_kv_head + " key/value heads)" : "");
    const parts = [m.n_layer + " layers", heads, "width " + m.n_embd, "vocabulary " + m.vocab_size,
      "context " + m.block_size, m.params.toLocaleString("en") + " parameters"];
    if (m.step !== null && m.step !== undefined) parts.unshift("step " + m.step);
    $("model-info").textContent = parts.join(" \u00b7 ");
  }

  function fillPrompts() {
    const select = $("prompt-select"), list = $("prompt-list");
    DATA.prompts.forEach((p, i) => {
      select.appendChild(el("option", { value: String(i) }, p.text));
      list.appendChild(el("option", { value: p.text }));
    });
    select.addEventListener("change", () => choosePrompt(Number(select.value), true));
    $("prompt-text").addEventListener("input", onTyped);
  }

  function onTyped() {
    const text = $("prompt-text").value;
    const found = DATA.prompts.findIndex((p) => p.text === text);
    const status = $("prompt-status");
    if (found >= 0) {
      choosePrompt(found, false);
      status.classList.remove("warn");
      status.textContent = "Showing the precomputed results for this prompt.";
    } else if (text.length) {
      status.classList.add("warn");
      status.textContent = "This prompt was not precomputed. The page holds results only for the " + DATA.prompts.length +
        " prompts in the list (rebuild it with llmbook explore --prompts FILE to add yours)," +
        " or ask a server in live mode below." +
        " Still showing: \u201c" + current().text + "\u201d.";
    } else {
      status.textContent = "";
    }
  }

  function choosePrompt(index, fromSelect) {
    state.prompt = index;
    state.pos = current().ids.length - 1;
    $("prompt-select").value = String(index);
    if (fromSelect) {
      $("prompt-text").value = current().text;
      $("prompt-status").textContent = "";
    }
    renderAll();
  }

  function fillLayers() {
    const layer = $("layer-select"), head = $("head-select");
    for (let l = 0; l < DATA.model.n_layer; l++) layer.appendChild(el("option", { value: String(l) }, "block " + (l + 1)));
    for (let h = 0; h < DATA.model.n_head; h++) head.appendChild(el("option", { value: String(h) }, "head " + (h + 1)));
    layer.addEventListener("change", () => { state.layer = Number(layer.value); renderAttention(); });
    head.addEventListener("change", () => { state.head = Number(head.value); renderAttention(); });
    $("show-numbers").addEventListener("change", renderAttention);
  }

  function selectPosition(pos) {
    state.pos = pos;
    renderTokens(); renderNext(); renderAttention(); renderLens();
  }

  // ------------------------------------------------------------------------------------------------- tokens
  function renderTokens() {
    const box = $("tokens"), p = current();
    box.replaceChildren();
    p.ids.forEach((id, i) => {
      const info = DATA.vocab[String(id)];
      const prob = i > 0 ? p.actual[i - 1] : null;
      const label = "position " + i + ", token id " + id + (info[1] ? ", bytes " + info[1] : ", special token") +
        (prob !== null ? ", probability " + fmtP(prob) + " given the tokens before it" : "");
      const button = el("button", { type: "button", class: "tok", "data-pos": String(i), "data-id": String(id),
        "data-bytes": info[1] || "", "aria-pressed": String(i === state.pos), title: label,
        "aria-label": piece(id) + ": " + label },
      piece(id));
      if (prob !== null) shade(button, prob);
      button.addEventListener("click", () => selectPosition(i));
      box.appendChild(button);
    });
  }

  // ------------------------------------------------------------------------------------ next-token distribution
  function renderNext() {
    const p = current(), pos = state.pos, body = $("next-table").tBodies[0];
    body.replaceChildren();
    const ids = p.next.ids[pos], probs = p.next.p[pos];
    let caption = "After position " + pos + " (" + quoted(p.ids[pos]) + "), the model's top " + ids.length + " next tokens.";
    if (pos + 1 < p.ids.length) {
      caption += " The prompt continues with " + quoted(p.ids[pos + 1]) + ", probability " + fmtP(p.actual[pos]) + ".";
    }
    $("next-caption").textContent = caption;
    ids.forEach((id, r) => {
      const row = el("tr", { "data-id": String(id), "data-p": String(probs[r]) });
      row.appendChild(el("td", { class: "num" }, String(r + 1)));
      row.appendChild(el("td", { class: "mono" }, piece(id)));
      row.appendChild(el("td", { class: "num" }, String(id)));
      row.appendChild(el("td", { class: "num prob" }, fmtP(probs[r])));
      const barCell = el("td", { "aria-hidden": "true" });
      const bar = el("div", { class: "bar" });
      bar.style.width = (probs[r] * 12).toFixed(2) + "rem";
      barCell.appendChild(bar);
      row.appendChild(barCell);
      body.appendChild(row);
    });
  }

  // ---------------------------------------------------------------------------------------------- attention
  function headerButton(text, title, pos) {
    const button = el("button", { type: "button", title: title }, text);
    button.addEventListener("click", () => selectPosition(pos));
    return button;
  }

  function renderAttention() {
    const p = current(), table = $("attn-map"), numbers = $("show-numbers").checked;
    const rows = p.attn[state.layer][state.head], T = p.ids.length;
    table.replaceChildren();
    table.setAttribute("data-layer", String(state.layer));
    table.setAttribute("data-head", String(state.head));
    table.appendChild(el("caption", { class: "sr-only" },
      "Attention weights of block " + (state.layer + 1) + ", head " + (state.head + 1) + ": rows are queries, columns keys"));
    const head = el("thead"), top = el("tr");
    top.appendChild(el("th", { scope: "col" }, "query \\ key"));
    p.ids.forEach((id, j) => {
      top.appendChild(el("th", { scope: "col", class: "col" + (j === state.pos ? " sel" : "") }, piece(id)));
    });
    head.appendChild(top);
    table.appendChild(head);
    const body = el("tbody");
    for (let i = 0; i < T; i++) {
      const tr = el("tr", { class: i === state.pos ? "sel" : "" });
      const th = el("th", { scope: "row" });
      th.appendChild(headerButton(i + " " + piece(p.ids[i]), "select position " + i, i));
      tr.appendChild(th);
      for (let j = 0; j < T; j++) {
        if (j >= rows[i].length) {
          tr.appendChild(el("td", { class: "masked" }));
          continue;
        }
        const w = rows[i][j];
        const td = el("td", { "data-q": String(i), "data-k": String(j), "data-w": String(w),
          title: "query " + i + " " + quoted(p.ids[i]) + " \u2192 key " + j + " " + quoted(p.ids[j]) + ": " + fmtW(w) });
        if (numbers) td.textContent = fmtW(w).replace(/^0\./, ".");
        shade(td, w / DATA.attn_scale);
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
    table.appendChild(body);
    const row = rows[state.pos].map((w, j) => [w, j]).sort((a, b) => b[0] - a[0]).slice(0, 3);
    $("attn-summary").textContent = "Block " + (state.layer + 1) + ", head " + (state.head + 1) +
      ": position " + state.pos + " (" +
      quoted(p.ids[state.pos]) + ") reads most from " +
      row.map(([w, j]) => "position " + j + " " + quoted(p.ids[j]) + " (" + fmtW(w) + ")").join(", ") + ".";
  }

  // ---------------------------------------------------------------------------------------------- logit lens
  const lensName = (l) => (l === 0 ? "embeddings" : "after block " + l) + (l === DATA.model.n_layer ? " (output)" : "");

  function renderLens() {
    const p = current(), table = $("lens-map"), L = DATA.model.n_layer;
    table.replaceChildren();
    table.appendChild(el("caption", { class: "sr-only" }, "Logit lens: top token at every layer (rows) and position (columns)"));
    const head = el("thead"), top = el("tr");
    top.appendChild(el("th", { scope: "col" }, "layer \\ position"));
    p.ids.forEach((id, j) => {
      const th = el("th", { scope: "col", class: "col" + (j === state.pos ? " sel" : "") });
      th.appendChild(headerButton(j + " " + piece(id), "select position " + j, j));
      top.appendChild(th);
    });
    head.appendChild(top);
    table.appendChild(head);
    const body = el("tbody");
    for (let l = L; l >= 0; l--) {  // output on top, as the stream flows upward
      const tr = el("tr");
      tr.appendChild(el("th", { scope: "row" }, lensName(l)));
      p.ids.forEach((_, j) => {
        const ids = p.lens.ids[l][j], probs = p.lens.p[l][j];
        const title = lensName(l) + ", position " + j + ": " + ids.map((id, r) => quoted(id) + " " + fmtP(probs[r])).join(", ");
        const td = el("td", { "data-layer": String(l), "data-pos": String(j), "data-id": String(ids[0]),
          "data-p": String(probs[0]), class: j === state.pos ? "sel" : "", title: title }, piece(ids[0]));
        shade(td, probs[0]);
        tr.appendChild(td);
      });
      body.appendChild(tr);
    }
    table.appendChild(body);
    const list = $("lens-list");
    list.replaceChildren();
    for (let l = 0; l <= L; l++) {
      const ids = p.lens.ids[l][state.pos], probs = p.lens.p[l][state.pos];
      list.appendChild(el("li", {}, lensName(l) + ": " + ids.map((id, r) => quoted(id) + " " + fmtP(probs[r])).join(", ")));
    }
  }

  function renderAll() {
    renderTokens(); renderNext(); renderAttention(); renderLens();
  }

  // ---------------------------------------------------------------------------------------------- live mode
  function liveToggle() {
    const on = $("live-enable").checked;
    for (const id of ["live-url", "live-model", "live-run"]) $(id).disabled = !on;
    $("live-status").textContent = on ? "Live mode is on: nothing is sent until you ask." : "";
  }

  async function askServer() {
    const status = $("live-status"), table = $("live-table");
    table.hidden = true;
    let base;
    try {
      base = new URL($("live-url").value.trim());
    } catch (err) {
      status.textContent = "Enter the server's full address, starting with http or https.";
      return;
    }
    if (base.protocol !== "http:" && base.protocol !== "https:") {
      status.textContent = "Only http and https addresses are allowed.";
      return;
    }
    const prompt = $("prompt-text").value || current().text;
    const endpoint = new URL(base.pathname.replace(/\/+$/, "").replace(/\/v1$/, "") + "/v1/completions", base);
    const body = { prompt: prompt, max_tokens: 1, temperature: 0, logprobs: Math.min(DATA.top_k, 20) };
    if ($("live-model").value.trim()) body.model = $("live-model").value.trim();
    status.textContent = "Asking " + endpoint.origin + " \u2026";
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), 30000);
    try {
      const response = await fetch(endpoint, { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body), signal: abort.signal });
      const text = await response.text();
      if (!response.ok) {
        status.textContent = "The server answered " + response.status + ": " + text.slice(0, 200);
        return;
      }
      let reply;
      try { reply = JSON.parse(text); } catch (err) {
        status.textContent = "The server's answer is not JSON: " + text.slice(0, 200);
        return;
      }
      const choice = reply && Array.isArray(reply.choices) ? reply.choices[0] : null;
      const logprobs = choice && choice.logprobs;
      const top = logprobs && Array.isArray(logprobs.top_logprobs) ? logprobs.top_logprobs[0] : null;
      if (!top || typeof top !== "object") {
        status.textContent = "The server's answer has no choices[0].logprobs.top_logprobs: does it support logprobs?";
        return;
      }
      const rows = Object.entries(top).filter(([, lp]) => typeof lp === "number" && lp <= 0).sort((a, b) => b[1] - a[1]);
      const tbody = table.tBodies[0];
      tbody.replaceChildren();
      rows.forEach(([token, lp], r) => {
        const p = Number(Math.exp(lp).toPrecision(3));
        const tr = el("tr", { "data-p": String(p) });
        tr.appendChild(el("td", { class: "num" }, String(r + 1)));
        tr.appendChild(el("td", { class: "mono" }, token.replace(/ /g, "\u2423").replace(/\n/g, "\u21b5")));
        tr.appendChild(el("td", { class: "num prob" }, String(p)));
        tbody.appendChild(tr);
      });
      table.hidden = false;
      status.textContent = "The server's top " + rows.length + " next tokens after \u201c" + prompt + "\u201d" +
        (reply.model ? " (model " + reply.model + ")" : "") + ".";
    } catch (err) {
      const why = err && err.name === "AbortError" ? "timed out"
        : "the request failed; is the server running, and does it allow cross-origin requests?";
      status.textContent = "No answer from " + endpoint.origin + " (" + why + ").";
    } finally {
      clearTimeout(timer);
    }
  }

  describeModel();
  fillPrompts();
  fillLayers();
  $("live-enable").addEventListener("change", liveToggle);
  $("live-run").addEventListener("click", askServer);
  choosePrompt(0, true);
  document.body.setAttribute("data-ready", "true");
})();
