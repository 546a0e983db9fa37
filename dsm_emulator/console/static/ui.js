// Small DOM helpers: h() builds elements (text is always set as text, never as HTML), tables, notices.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function table(caption, columns, rows, rowAttrs = () => ({})) {
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      {},
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c.title)))),
      h(
        "tbody",
        {},
        rows.length === 0
          ? h("tr", {}, h("td", { colspan: columns.length, class: "muted" }, "none"))
          : rows.map((row) => h("tr", rowAttrs(row), columns.map((c) => h("td", { "data-label": c.title }, c.cell(row))))),
      ),
    ),
  );
}

// A status line that screen readers announce.
export function notice() {
  const el = h("p", { class: "notice", role: "status", "aria-live": "polite" });
  el.show = (text, kind = "info") => {
    el.textContent = text;
    el.dataset.kind = kind;
  };
  return el;
}

export function button(label, onclick, attrs = {}) {
  return h("button", { type: "button", onclick, ...attrs }, label);
}

// Runs an action from a button: disables it meanwhile and reports success or the API's refusal.
export async function act(status, what, work) {
  try {
    const result = await work();
    status.show(`${what}: done`, "ok");
    return result;
  } catch (error) {
    status.show(`${what}: refused: ${error.message}`, "error");
    return undefined;
  }
}

export function short(id) {
  return id ? String(id).slice(0, 8) : "";
}

export function ms(value) {
  return value === undefined || value === null ? "–" : `${Number(value).toFixed(1)} ms`;
}

export function copyable(label, value) {
  const field = h("input", { readonly: true, value, "aria-label": label, class: "copy-value" });
  const copy = button("Copy", async () => {
    field.select();
    try {
      await navigator.clipboard.writeText(value);
      copy.textContent = "Copied";
    } catch {
      document.execCommand("copy");
    }
  });
  return h("div", { class: "copy" }, h("span", { class: "copy-label" }, label), field, copy);
}

// Calls fn now and every periodMs until the returned stop() is called (or the page changes).
export function every(periodMs, fn) {
  let stopped = false;
  let timer;
  const tick = async () => {
    if (stopped) return;
    try {
      await fn();
    } finally {
      if (!stopped) timer = setTimeout(tick, periodMs);
    }
  };
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
