// Small DOM helpers: the dashboard has no framework.
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { DeploymentKind, DeploymentState } from "./gen/slipway/v1/resources_pb";

type Child = Node | string | number | null | undefined | false;
type Attributes = Record<string, string | number | boolean | EventListener | undefined>;

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attributes: Attributes = {},
  ...children: (Child | Child[])[]
): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === false) continue;
    if (typeof value === "function") element.addEventListener(name.replace(/^on/, ""), value);
    else if (value === true) element.setAttribute(name, "");
    else element.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
  return element;
}

export function stateName(state: DeploymentState): string {
  return (DeploymentState[state] ?? "UNSPECIFIED").replace(/^DEPLOYMENT_STATE_/, "");
}

export function kindName(kind: DeploymentKind): string {
  return (DeploymentKind[kind] ?? "").replace(/^DEPLOYMENT_KIND_/, "").toLowerCase();
}

export function stateBadge(state: DeploymentState): HTMLElement {
  const name = stateName(state);
  return h("span", { class: `state state-${name.toLowerCase()}`, "data-state": name }, name);
}

export function time(stamp: Timestamp | undefined): string {
  if (!stamp) return "";
  const date = new Date(Number(stamp.seconds) * 1000 + Math.floor(stamp.nanos / 1e6));
  return date.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

/** A line the user copies (a curl or a slipway command), with its copy button. */
export function copyable(text: string): HTMLElement {
  const button = h("button", { class: "copy", title: "Copy" }, "Copy");
  button.addEventListener("click", () => {
    void navigator.clipboard?.writeText(text).then(
      () => (button.textContent = "Copied"),
      () => (button.textContent = "Select and copy"),
    );
  });
  return h("div", { class: "copyable" }, h("code", {}, text), button);
}

/** Where a page says what the API answered (a refusal's message and reason). */
export function notice(): { element: HTMLElement; error(text: string): void; ok(text: string): void; clear(): void } {
  const element = h("div", { class: "notice", role: "status", hidden: true });
  const show = (kind: string, text: string) => {
    element.className = `notice notice-${kind}`;
    element.textContent = text;
    element.hidden = false;
  };
  return {
    element,
    error: (text) => show("error", text),
    ok: (text) => show("ok", text),
    clear: () => {
      element.hidden = true;
      element.textContent = "";
    },
  };
}

export function shellQuote(text: string): string {
  return /^[A-Za-z0-9_./:@=-]+$/.test(text) ? text : `'${text.replace(/'/g, `'\\''`)}'`;
}
