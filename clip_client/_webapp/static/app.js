// clip-client app: the page's behaviour. Data goes into the page through textContent and
// attributes only, never as HTML markup, so a path or a query is always shown as text.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  // Results per page: 24, or the page address's ?k= (1 to the API's bound).
  const asked = Number(new URLSearchParams(window.location.search).get("k"));
  const PAGE = Number.isInteger(asked) && asked >= 1 ? Math.min(asked, Number(document.body.dataset.maxK)) : 24;
  const state = { mode: { kind: "browse" }, offset: 0, more: false, loading: false, generation: 0, labels: "", label: "" };
  let groupsShown = [];

  // -- feedback ------------------------------------------------------------------------------------

  function setStatus(el, text) { el.textContent = text; }
  function showError(el, text) { el.textContent = text; el.hidden = !text; }

  async function getJSON(url, options) {
    let response;
    try {
      response = await fetch(url, options);
    } catch (e) {
      throw new Error("the app is not answering (is `clip-client app` still running?)");
    }
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok) {
      let message = body && body.error ? body.error : `the app answered ${response.status}`;
      if (body && Array.isArray(body.detail) && body.detail.length) message = body.detail[0].msg || message;
      throw new Error(message);
    }
    return body;
  }

  // -- cards ---------------------------------------------------------------------------------------

  function thumbnail(img, holder, url, name) {
    img.alt = name;
    img.addEventListener("error", async () => {
      let message = "image unavailable";
      try {
        const r = await fetch(url);
        const body = await r.json();
        if (body && body.error) message = body.error;
      } catch (e) { /* keep the generic message */ }
      const div = document.createElement("div");
      div.className = "placeholder";
      div.textContent = message;
      img.replaceWith(div);
      holder.dataset.state = "missing";
    }, { once: true });
    img.addEventListener("load", () => { holder.dataset.state = "loaded"; }, { once: true });
    img.src = url;
  }

  function card(row) {
    const node = $("card-template").content.firstElementChild.cloneNode(true);
    node.dataset.id = String(row.id);
    const img = node.querySelector("img");
    thumbnail(img, node, row.thumbnail, row.path);
    node.querySelector(".path").textContent = row.path;
    node.querySelector(".score").textContent = row.score === null || row.score === undefined ? "" : `score ${row.score.toFixed(4)}`;
    const label = node.querySelector(".label");
    if (row.label !== undefined && row.label !== null) {
      label.textContent = `${row.label} ${(row.probability * 100).toFixed(1)}%`;
      node.dataset.label = row.label;
    }
    node.querySelector(".similar").addEventListener("click", () => {
      start({ kind: "similar", id: row.id, path: row.path });
    });
    return node;
  }

  // -- search --------------------------------------------------------------------------------------

  function params(extra) {
    const p = new URLSearchParams({ k: String(PAGE), offset: String(state.offset), ...extra });
    if (state.labels) p.set("labels", state.labels);
    if (state.label) p.set("label", state.label);
    return p;
  }

  function describe(mode) {
    if (mode.kind === "text") return `Results for “${mode.q}”`;
    if (mode.kind === "image") return `Images like ${mode.file.name}`;
    if (mode.kind === "similar") return `More like ${mode.path}`;
    return "Every image, in file order";
  }

  async function loadPage() {
    if (state.loading) return;
    state.loading = true;
    const generation = state.generation;
    const mode = state.mode;
    setStatus($("status"), state.offset ? "Loading more…" : "Searching…");
    document.body.dataset.loading = "yes";
    showError($("error"), "");
    try {
      let body;
      if (mode.kind === "text") {
        body = await getJSON(`/api/search?${params({ q: mode.q })}`);
      } else if (mode.kind === "image") {
        const form = new FormData();
        form.append("file", mode.file);
        body = await getJSON(`/api/search/image?${params({})}`, { method: "POST", body: form });
      } else if (mode.kind === "similar") {
        body = await getJSON(`/api/similar/${encodeURIComponent(mode.id)}?${params({})}`);
      } else {
        body = await getJSON(`/api/browse?${params({})}`);
      }
      if (generation !== state.generation) return;
      const grid = $("results");
      for (const row of body.results) grid.appendChild(card(row));
      state.offset += body.results.length;
      state.more = Boolean(body.more) && body.results.length > 0;
      const shown = grid.children.length;
      setStatus($("status"), shown ? `${shown} result${shown === 1 ? "" : "s"}${state.more ? " (scroll for more)" : ""}` : "No results: try other words, or another label.");
      document.body.dataset.results = String(shown);
    } catch (e) {
      if (generation !== state.generation) return;
      setStatus($("status"), "");
      showError($("error"), e.message);
      state.more = false;
    } finally {
      if (generation === state.generation) {
        state.loading = false;
        document.body.dataset.loading = "no";
        watchBottom();
      }
    }
  }

  function start(mode) {
    state.generation += 1;
    state.loading = false;
    state.mode = mode;
    state.offset = 0;
    state.more = false;
    $("results").replaceChildren();
    $("mode").textContent = describe(mode);
    window.scrollTo(0, 0);
    loadPage();
  }

  // The next page loads when the sentinel below the results comes within 400 px of the viewport.
  // An IntersectionObserver reports only changes, measured at frames: a page that grows and a
  // reader back at the bottom before the next frame is no change, and would never load again.
  // So the sentinel is observed afresh after every page: a new observation always reports, at
  // the next frame, where the sentinel is then.
  const bottom = new IntersectionObserver((entries) => {
    if (entries[entries.length - 1].isIntersecting && state.more && !state.loading) loadPage();
  }, { rootMargin: "400px" });

  function watchBottom() {
    bottom.unobserve($("more"));
    bottom.observe($("more"));
  }
  watchBottom();

  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const q = $("query").value.trim();
    start(q ? { kind: "text", q } : { kind: "browse" });
  });

  function searchFile(file) {
    if (!file) return;
    const limit = Number(document.body.dataset.maxUploadMib) * 1024 * 1024;
    if (file.size > limit) {
      showError($("error"), `${file.name} is over ${document.body.dataset.maxUploadMib} MiB: choose a smaller image`);
      return;
    }
    start({ kind: "image", file });
  }

  $("image-input").addEventListener("change", (e) => { searchFile(e.target.files[0]); e.target.value = ""; });
  const drop = $("drop-zone");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    searchFile(e.dataTransfer.files[0]);
  });

  // -- labels --------------------------------------------------------------------------------------

  let labelsAsked = 0;
  $("labels-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const asked = ++labelsAsked; // latest wins: an older answer arriving later is dropped
    const names = $("labels").value.split(",").map((s) => s.trim()).filter(Boolean);
    const select = $("label-filter");
    state.labels = [...new Set(names)].join(",");
    state.label = "";
    const keep = select.firstElementChild;
    select.replaceChildren(keep);
    $("label-counts").textContent = "";
    if (state.labels) {
      setStatus($("status"), "Labelling…");
      try {
        const body = await getJSON(`/api/labels?${new URLSearchParams({ labels: state.labels })}`);
        if (asked !== labelsAsked) return; // a newer Label press was made meanwhile
        for (const name of body.labels) {
          const option = document.createElement("option");
          option.value = name;
          const n = body.counts ? body.counts[name] : undefined;
          option.textContent = n === undefined ? name : `${name} (${n})`;
          select.appendChild(option);
        }
        select.disabled = false;
      } catch (err) {
        if (asked !== labelsAsked) return;
        showError($("error"), err.message);
        state.labels = "";
        select.disabled = true;
        return;
      }
    } else {
      select.disabled = true;
    }
    start(state.mode);
  });

  $("label-filter").addEventListener("change", (e) => {
    state.label = e.target.value;
    start(state.mode);
  });

  // -- duplicates ----------------------------------------------------------------------------------

  function tab(name) {
    for (const which of ["search", "duplicates"]) {
      $(`tab-${which}`).setAttribute("aria-selected", String(which === name));
      $(`panel-${which}`).hidden = which !== name;
    }
  }
  $("tab-search").addEventListener("click", () => tab("search"));
  $("tab-duplicates").addEventListener("click", () => tab("duplicates"));

  $("threshold").addEventListener("input", (e) => { $("threshold-value").textContent = Number(e.target.value).toFixed(2); });

  function markKeep(groupNode, id) {
    for (const c of groupNode.querySelectorAll(".card")) {
      const keep = c.dataset.id === String(id);
      c.classList.toggle("keep", keep);
      c.classList.toggle("drop", !keep);
    }
    groupNode.dataset.keep = String(id);
  }

  function renderGroup(group) {
    const node = document.createElement("section");
    node.className = "group";
    node.dataset.group = String(group.group);
    const h = document.createElement("h2");
    h.textContent = `Group ${group.group}: ${group.members.length} images`;
    node.appendChild(h);
    const members = document.createElement("div");
    members.className = "members";
    for (const m of group.members) {
      const c = card({ ...m, score: m.similarity });
      c.querySelector(".similar").remove();
      c.querySelector(".score").textContent = `similarity ${m.similarity.toFixed(4)}`;
      const choice = document.createElement("label");
      choice.className = "choice";
      const radio = document.createElement("input");
      radio.type = "radio";
      radio.name = `keep-${group.group}`;
      radio.value = String(m.id);
      radio.checked = m.id === group.keep;
      radio.addEventListener("change", () => markKeep(node, m.id));
      choice.append(radio, document.createTextNode("keep"));
      c.querySelector("figcaption").appendChild(choice);
      members.appendChild(c);
    }
    node.appendChild(members);
    markKeep(node, group.keep);
    return node;
  }

  let duplicatesAsked = 0;
  // Releasing the slider asks again; so does the button.
  $("threshold").addEventListener("change", () => $("duplicates-form").requestSubmit());

  $("duplicates-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const asked = ++duplicatesAsked;
    const threshold = $("threshold").value;
    const status = $("duplicates-status");
    showError($("duplicates-error"), "");
    setStatus(status, "Finding near-duplicates…");
    $("groups").replaceChildren();
    groupsShown = [];
    $("export-csv").disabled = $("export-json").disabled = true;
    try {
      // Every group, a page of 1,000 at a time: the page shows the first 1,000, the export holds all.
      const all = [];
      let total = 0;
      for (;;) {
        const params = new URLSearchParams({ threshold, limit: "1000", offset: String(all.length) });
        const body = await getJSON(`/api/duplicates?${params}`);
        if (asked !== duplicatesAsked) return; // a newer threshold was asked for meanwhile
        total = body.total;
        all.push(...body.groups);
        if (!body.groups.length || all.length >= total) break;
        if (all.length === body.groups.length) for (const g of body.groups) $("groups").appendChild(renderGroup(g));
        setStatus(status, `Fetching groups for the export… ${all.length} of ${total}`);
      }
      groupsShown = all;
      if (all.length <= 1000) for (const g of all) $("groups").appendChild(renderGroup(g));
      setStatus(status, total ? `${total} group${total === 1 ? "" : "s"} at ${Number(threshold).toFixed(2)}${total > 1000 ? ` (first 1000 shown; the export holds all ${total})` : ""}` : `No near-duplicates at ${Number(threshold).toFixed(2)}.`);
      $("export-csv").disabled = $("export-json").disabled = !all.length;
    } catch (err) {
      if (asked !== duplicatesAsked) return;
      setStatus(status, "");
      showError($("duplicates-error"), err.message);
    }
  });

  function decisions() {
    const out = [];
    for (const g of groupsShown) {
      const node = document.querySelector(`.group[data-group="${g.group}"]`);
      const keep = node ? node.dataset.keep : String(g.keep);
      for (const m of g.members) out.push({ path: m.path, group: g.group, decision: String(m.id) === keep ? "keep" : "drop" });
    }
    return out;
  }

  function download(name, type, text) {
    const url = URL.createObjectURL(new Blob([text], { type }));
    const a = document.createElement("a");
    a.href = url;
    a.download = name;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  }

  const csvCell = (v) => (/[",\r\n]/.test(String(v)) ? `"${String(v).replace(/"/g, '""')}"` : String(v));
  $("export-csv").addEventListener("click", () => {
    const lines = ["path,group,decision", ...decisions().map((d) => [d.path, d.group, d.decision].map(csvCell).join(","))];
    download("duplicates.csv", "text/csv", lines.join("\r\n") + "\r\n");
  });
  $("export-json").addEventListener("click", () => {
    download("duplicates.json", "application/json", JSON.stringify(decisions(), null, 2) + "\n");
  });

  start({ kind: "browse" });
})();
