// Model: its deployments, live from WatchDeployments (a server stream over Connect), the
// endpoints to call (copyable curl and slipway predict lines), and the actions of the
// product's rules. Every refusal shows the API's own message and ErrorInfo reason.
import { ConnectError } from "@connectrpc/connect";
import { apiKey, dashboardConfig, deployments, describe, models } from "../api";
import { DeploymentKind, DeploymentState, type Deployment, type Model } from "../gen/slipway/v1/resources_pb";
import type { Page } from "../main";
import { signInAgain } from "../main";
import { copyable, h, kindName, notice, shellQuote, stateBadge, time } from "../ui";

const EXAMPLE_PAYLOAD = '{"text": "hi"}';

export function modelPage(modelId: string): Page {
  const status = notice();
  const title = h("h1", {}, "Model");
  const body = h("tbody");
  const panel = h("div", { class: "panel", hidden: true });
  const endpoints = h("div", { class: "endpoints" });
  const live = h("span", { class: "live", "data-live": "connecting" }, "connecting…");
  const element = h(
    "section",
    { class: "page", "data-page": "model" },
    title,
    status.element,
    h("h2", {}, "Deployments ", live),
    h(
      "table",
      { class: "deployments" },
      h(
        "thead",
        {},
        h("tr", {}, ...["Name", "ID", "Kind", "", "State", "Replicas", "Revision", "Created", "Actions"].map((t) => h("th", {}, t))),
      ),
      body,
    ),
    panel,
    h("h2", {}, "Endpoints"),
    endpoints,
  );
  const abort = new AbortController();
  const list = new Map<string, Deployment>();
  let model: Model | undefined;
  let gateway = "";

  const render = () => {
    const sorted = [...list.values()].sort((a, b) => Number(a.createTime?.seconds ?? 0) - Number(b.createTime?.seconds ?? 0));
    body.replaceChildren(...sorted.map(row));
    renderEndpoints(sorted);
  };

  const act = async (verb: string, d: Deployment, call: () => Promise<unknown>) => {
    status.clear();
    try {
      await call();
      status.ok(`${verb}: done for ${d.name} (${d.id})`);
    } catch (error) {
      if (!signInAgain(error)) status.error(`${verb} ${d.name} refused: ${describe(error)}`);
    }
  };

  const openPanel = (...children: (Node | string)[]) => {
    panel.replaceChildren(...children, h("button", { class: "link", onclick: () => (panel.hidden = true) }, "Cancel"));
    panel.hidden = false;
  };

  const rename = (d: Deployment) => {
    const input = h("input", { name: "new-name", value: d.name, pattern: "[0-9A-Za-z_.\\-]{1,63}" });
    const form = h("form", { class: "inline" }, h("label", {}, `New name of ${d.name}: `, input), h("button", { type: "submit" }, "Rename"));
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      panel.hidden = true;
      void act("Rename", d, () =>
        deployments.updateDeployment({ deployment: { id: d.id, name: input.value.trim() }, updateMask: { paths: ["name"] } }),
      );
    });
    openPanel(form);
    input.focus();
  };

  const remove = (d: Deployment) => {
    const input = h("input", { name: "confirm-name", placeholder: d.name, autocomplete: "off" });
    const confirm = h("button", { type: "submit", class: "danger", disabled: true }, "Delete for good");
    input.addEventListener("input", () => (confirm.disabled = input.value !== d.name));
    const form = h(
      "form",
      { class: "inline", "data-confirm": "delete" },
      h("p", {}, `Deleting ${d.name} (${d.id}) cannot be undone; its usage records remain. Type its name to confirm: `),
      input,
      confirm,
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (input.value !== d.name) return;
      panel.hidden = true;
      void act("Delete", d, () => deployments.deleteDeployment({ deploymentId: d.id }));
    });
    openPanel(form);
    input.focus();
  };

  const row = (d: Deployment): HTMLElement => {
    const actions: HTMLElement[] = [];
    const button = (label: string, onclick: () => void, title = "") =>
      actions.push(h("button", { "data-action": label.toLowerCase(), title: title || undefined, onclick }, label));
    if (!d.isProduction) button("Promote", () => void act("Promote", d, () => deployments.promoteDeployment({ deploymentId: d.id })));
    if (d.active) button("Deactivate", () => void act("Deactivate", d, () => deployments.deactivateDeployment({ deploymentId: d.id })));
    else button("Activate", () => void act("Activate", d, () => deployments.activateDeployment({ deploymentId: d.id })));
    if (d.state === DeploymentState.SCALED_TO_ZERO) button("Wake", () => void act("Wake", d, () => deployments.wakeDeployment({ deploymentId: d.id })));
    if (d.kind !== DeploymentKind.DEVELOPMENT) button("Rename", () => rename(d));
    button("Delete", () => remove(d), d.isProduction ? "Production cannot be deleted: promote another deployment first" : "");
    return h(
      "tr",
      { "data-deployment": d.id, "data-name": d.name },
      h("td", {}, h("a", { href: `#/deployment/${d.id}` }, d.name)),
      h("td", {}, h("code", {}, d.id)),
      h("td", {}, kindName(d.kind)),
      h("td", {}, d.isProduction ? h("span", { class: "badge production", "data-badge": "production" }, "production") : ""),
      h("td", {}, stateBadge(d.state), d.statusMessage ? h("div", { class: "message" }, d.statusMessage) : null),
      h("td", { class: "number" }, `${d.readyReplicas}/${d.desiredReplicas}`),
      h("td", { class: "number" }, String(d.revision)),
      h("td", {}, time(d.createTime)),
      h("td", { class: "actions" }, ...actions),
    );
  };

  const renderEndpoints = (sorted: Deployment[]) => {
    const base = gateway || "http://<gateway>";
    const auth = apiKey() ? ` -H "Authorization: Api-Key $SLIPWAY_API_KEY"` : "";
    const target = shellQuote(model?.name || modelId);
    const lines: HTMLElement[] = [];
    for (const d of sorted) {
      const path = d.isProduction
        ? `/model/${modelId}/production/predict`
        : d.kind === DeploymentKind.DEVELOPMENT
          ? `/model/${modelId}/development/predict`
          : `/model/${modelId}/deployment/${d.id}/predict`;
      const alias = d.isProduction ? "" : d.kind === DeploymentKind.DEVELOPMENT ? " --deployment development" : ` --deployment ${d.id}`;
      lines.push(
        h(
          "div",
          { class: "endpoint", "data-endpoint": d.id },
          h("h3", {}, d.isProduction ? `production (${d.name})` : d.name),
          copyable(`curl -X POST ${base}${path}${auth} -d '${EXAMPLE_PAYLOAD}'`),
          copyable(`slipway predict ${target}${alias} '${EXAMPLE_PAYLOAD}'`),
        ),
      );
    }
    endpoints.replaceChildren(...lines);
    if (!gateway) endpoints.prepend(h("p", { class: "hint" }, "Replace <gateway> with your gateway's HTTP address."));
  };

  const watch = async () => {
    while (!abort.signal.aborted) {
      try {
        list.clear();
        for await (const message of deployments.watchDeployments({ modelId }, { signal: abort.signal })) {
          const d = message.deployment;
          if (!d) continue;
          if (d.deleteTime) list.delete(d.id);
          else list.set(d.id, d);
          live.textContent = "live";
          live.dataset.live = "live";
          render();
        }
      } catch (error) {
        if (abort.signal.aborted) return;
        if (signInAgain(error)) return;
        live.textContent = `reconnecting (${error instanceof ConnectError ? describe(error) : String(error)})`;
        live.dataset.live = "reconnecting";
      }
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  };

  void (async () => {
    try {
      [model, { gatewayHttpUrl: gateway }] = await Promise.all([
        models.getModel({ modelId }).then((answer) => answer.model),
        dashboardConfig(),
      ]);
      title.textContent = `Model ${model?.name ?? modelId}`;
      title.append(" ", h("code", {}, modelId));
      render();
      await watch();
    } catch (error) {
      if (!signInAgain(error)) status.error(describe(error));
    }
  })();
  return { element, dispose: () => abort.abort() };
}
