// specbench view: the page over the JSON API (see `specbench view --help` and the README).
// Every piece of text from results (prompts, responses, judge reasons) goes into the page with
// textContent or as an attribute value: never as HTML.
"use strict";

const main = document.getElementById("main");

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "onclick" || key === "onsubmit" || key === "onchange") node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function number(value) {
  return typeof value === "number" && Number.isFinite(value) ? value.toFixed(4) : "-";
}

function cell(value) {
  if (value === null || value === undefined) return el("td", {}, "-");
  if (typeof value === "number") return el("td", { class: "n" }, Number.isInteger(value) ? String(value) : number(value));
  if (typeof value === "object" && "estimate" in value) {
    return el("td", { class: "n" }, `${number(value.estimate)} [${number(value.low)}, ${number(value.high)}]`);
  }
  return el("td", {}, String(value));
}

async function api(path) {
  const response = await fetch(path, { headers: { accept: "application/json" } });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function show(...nodes) {
  main.replaceChildren(...nodes);
}

function runName(run) {
  return `${run.model} · ${run.scenario} · ${run.method} · ${run.judge}`;
}

async function leaderboardPage() {
  const table = await api("/api/leaderboard");
  if (!table) return show(el("p", {}, "No judged results."));
  show(
    el("h1", {}, table.title),
    el("table", { id: "leaderboard" },
      el("thead", {}, el("tr", {}, table.columns.map((c) => el("th", {}, c)))),
      el("tbody", {}, table.rows.map((row) => el("tr", {}, row.map(cell))))),
    el("p", { class: "note" }, table.note),
  );
}

async function runsPage() {
  const runs = await api("/api/runs");
  show(
    el("h1", {}, "Runs"),
    el("table", { id: "runs" },
      el("thead", {}, el("tr", {}, ["run", "model", "scenario", "method", "judge", "items", "judge errors", "safety", "behavioral", "SAR"].map((c) => el("th", {}, c)))),
      el("tbody", {}, runs.map((run) => el("tr", {},
        el("td", {}, el("a", { href: `#/run/${run.id}` }, String(run.id))),
        cell(run.model), cell(run.scenario), cell(run.method), cell(run.judge),
        cell(run.items), cell(run.judge_errors), cell(run.safety), cell(run.behavioral), cell(run.sar))))),
  );
}

function readQuery(hash) {
  const at = hash.indexOf("?");
  return new URLSearchParams(at >= 0 ? hash.slice(at + 1) : "");
}

async function runPage(id, query) {
  const params = new URLSearchParams(query);
  params.set("per_page", params.get("per_page") || "50");
  const page = await api(`/api/runs/${encodeURIComponent(id)}/items?${params}`);
  const run = page.run;
  const field = (name, label, input) => el("label", {}, label, input);
  const form = el("form", { class: "filters", id: "filters", onsubmit: (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const next = new URLSearchParams();
    for (const [key, value] of data.entries()) if (value) next.set(key, value);
    location.hash = `#/run/${id}?${next}`;
  } },
    field("label", "label", el("select", { name: "label" },
      ["", "unsafe", "safe"].map((v) => el("option", { value: v, selected: params.get("label") === v }, v || "any")))),
    field("q", "search prompts and responses", el("input", { name: "q", type: "search", value: params.get("q") || "" })),
    field("violated", "rule broken (safety:3)", el("input", { name: "violated", value: params.get("violated") || "", size: 14 })),
    field("unsafe", "unsafe responses", el("input", { name: "unsafe", type: "checkbox", value: "true", checked: params.get("unsafe") === "true" })),
    field("errors", "judge errors", el("input", { name: "errors", type: "checkbox", value: "true", checked: params.get("errors") === "true" })),
    el("button", { type: "submit" }, "Filter"),
  );
  const pageNumber = Number(params.get("page") || 0);
  const pages = Math.max(1, Math.ceil(page.total / page.per_page));
  const go = (to) => () => {
    params.set("page", String(to));
    location.hash = `#/run/${id}?${params}`;
  };
  show(
    el("h1", {}, runName(run)),
    form,
    el("p", { id: "count" }, `${page.total} item(s)`),
    el("table", { id: "items" },
      el("thead", {}, el("tr", {}, ["#", "label", "source", "safety", "behavioral", "SAR", "rules broken", "prompt"].map((c) => el("th", {}, c)))),
      el("tbody", {}, page.items.map((item) => el("tr", { class: item.score && item.score.safety === 0 ? "violated" : null },
        el("td", {}, el("a", { href: `#/run/${id}/item/${item.position}` }, String(item.position))),
        cell(item.label), cell(item.source),
        item.judge_error ? el("td", { class: "error", colspan: 3 }, "judge error")
          : [cell(item.score.safety), el("td", { class: "n" }, number(item.score.behavioral)), el("td", { class: "n" }, number(item.score.sar))],
        cell(item.violated.join(" ")),
        cell(item.prompt.length > 160 ? `${item.prompt.slice(0, 160)}…` : item.prompt))))),
    el("div", { class: "pager" },
      el("button", { disabled: pageNumber <= 0, onclick: go(pageNumber - 1) }, "previous"),
      `page ${pageNumber + 1} of ${pages}`,
      " ",
      el("button", { disabled: pageNumber + 1 >= pages, onclick: go(pageNumber + 1) }, "next")),
  );
}

function rulesTable(rules, differing) {
  return el("table", { class: "rules" },
    el("thead", {}, el("tr", {}, ["rule", "text", "verdict", "judge's reason"].map((c) => el("th", {}, c)))),
    el("tbody", {}, rules.map((rule) => {
      const id = `${rule.kind}:${rule.number}`;
      const violated = rule.verdict === "NO";
      return el("tr", { class: violated ? "violated" : null, "data-rule": id },
        el("td", {}, id),
        cell(rule.text),
        el("td", { class: `verdict-${rule.verdict}${differing && differing.includes(id) ? " differs" : ""}` }, rule.verdict),
        cell(rule.reason));
    })));
}

function itemBlock(run, item, differing) {
  return el("section", {},
    el("h2", {}, runName(run)),
    el("p", {}, `label ${item.label} · source ${item.source} · `,
      item.score ? `safety ${item.score.safety} · behavioral ${number(item.score.behavioral)} · SAR ${number(item.score.sar)}` : "judge error"),
    el("h3", {}, "Prompt"), el("pre", { class: "text", "data-field": "prompt" }, item.prompt),
    el("h3", {}, "Adversarial prompt"), el("pre", { class: "text", "data-field": "adversarial_prompt" }, item.adversarial_prompt),
    item.thought ? [el("h3", {}, "Thought"), el("pre", { class: "text", "data-field": "thought" }, item.thought)] : null,
    el("h3", {}, "Response"), el("pre", { class: "text", "data-field": "response" }, item.response),
    item.judge_error ? [el("h3", {}, "Judge error"), el("pre", { class: "text error" }, JSON.stringify(item.judge_error, null, 2))] : null,
    el("h3", {}, "Verdicts"), rulesTable(item.rules, differing));
}

async function itemPage(id, position) {
  const [{ run, item }, runs] = await Promise.all([api(`/api/runs/${encodeURIComponent(id)}/items/${encodeURIComponent(position)}`), api("/api/runs")]);
  const others = runs.filter((r) => r.id !== run.id && r.scenario === run.scenario);
  const picker = el("select", { id: "compare-with", onchange: (event) => {
    if (event.target.value) location.hash = `#/compare/${run.id}/${event.target.value}/${item.position}`;
  } }, el("option", { value: "" }, "compare with…"), others.map((r) => el("option", { value: r.id }, runName(r))));
  show(el("p", {}, el("a", { href: `#/run/${run.id}` }, "← items"), " ", picker), itemBlock(run, item, null));
}

async function comparePage(a, b, position) {
  const result = await api(`/api/compare?a=${encodeURIComponent(a)}&b=${encodeURIComponent(b)}&position=${encodeURIComponent(position)}`);
  const right = result.b ? itemBlock(result.b.run, result.b.item, result.differing) : el("p", {}, "This prompt is not in the other run.");
  show(
    el("p", { id: "differing" }, result.differing.length ? `Verdicts that differ: ${result.differing.join(", ")}` : "The verdicts agree."),
    el("div", { class: "columns" }, itemBlock(result.a.run, result.a.item, result.differing), right),
  );
}

async function route() {
  const hash = location.hash || "#/";
  const path = hash.split("?")[0];
  let match;
  try {
    if ((match = path.match(/^#\/run\/(\d+)\/item\/(\d+)$/))) await itemPage(match[1], match[2]);
    else if ((match = path.match(/^#\/run\/(\d+)$/))) await runPage(match[1], readQuery(hash));
    else if ((match = path.match(/^#\/compare\/(\d+)\/(\d+)\/(\d+)$/))) await comparePage(match[1], match[2], match[3]);
    else if (path === "#/runs") await runsPage();
    else await leaderboardPage();
    document.body.dataset.ready = hash;
  } catch (error) {
    show(el("p", { class: "error" }, String(error.message || error)));
    document.body.dataset.ready = hash;
  }
}

window.addEventListener("hashchange", route);
route();
