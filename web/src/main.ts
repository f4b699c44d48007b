// The dashboard: hash routes (#/models, #/model/<id>, #/deployment/<id>, #/usage, #/keys),
// signed in with an API key kept in sessionStorage.
import "uplot/dist/uPlot.min.css";
import "./style.css";
import { apiKey, describe, needsSignIn, setApiKey, takeKeyFromFragment } from "./api";
import { deploymentPage } from "./pages/deployment";
import { keysPage } from "./pages/keys";
import { modelPage } from "./pages/model";
import { modelsPage } from "./pages/models";
import { usagePage } from "./pages/usage";
import { h } from "./ui";

export interface Page {
  element: HTMLElement;
  dispose(): void;
}

const app = document.getElementById("app") as HTMLElement;
const signOut = document.getElementById("sign-out") as HTMLButtonElement;
let current: Page | null = null;

function signInPage(message = ""): Page {
  const input = h("input", { type: "password", name: "api-key", placeholder: "sk_…", autocomplete: "off", size: 60 });
  const form = h(
    "form",
    { class: "sign-in" },
    h("h1", {}, "Sign in"),
    h("p", {}, "Paste an API key (", h("code", {}, "slipway keys create"), ", or the admin key in ", h("code", {}, ".slipway/admin.key"), "). It is kept in this browser tab only."),
    message ? h("p", { class: "notice notice-error" }, message) : null,
    input,
    h("button", { type: "submit" }, "Sign in"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    setApiKey(input.value.trim());
    location.hash = "#/models";
    void route();
  });
  return { element: form, dispose() {} };
}

/** A page whose API call said the key is missing or wrong sends the user to sign in. */
export function signInAgain(error: unknown): boolean {
  if (!needsSignIn(error)) return false;
  show(signInPage(describe(error)));
  return true;
}

function show(page: Page): void {
  current?.dispose();
  current = page;
  app.replaceChildren(page.element);
}

async function route(): Promise<void> {
  signOut.hidden = !apiKey();
  const [, name = "models", id = ""] = location.hash.replace(/^#/, "").split("/");
  for (const link of document.querySelectorAll<HTMLAnchorElement>("nav a")) {
    link.classList.toggle("active", link.dataset.nav === name || (name === "model" && link.dataset.nav === "models"));
  }
  const ref = decodeURIComponent(id);
  if (name === "model" && ref) show(modelPage(ref));
  else if (name === "deployment" && ref) show(deploymentPage(ref));
  else if (name === "usage") show(usagePage());
  else if (name === "keys") show(keysPage());
  else if (name === "sign-in") show(signInPage());
  else show(modelsPage());
}

signOut.addEventListener("click", () => {
  setApiKey("");
  location.hash = "#/sign-in";
});
takeKeyFromFragment();
window.addEventListener("hashchange", () => void route());
void route();
