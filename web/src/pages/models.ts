// Models: name, ID, production and development deployments, a state summary and the
// request rate (answers per second over the last minute, from MetricService).
import { create } from "@bufbuild/protobuf";
import { DurationSchema } from "@bufbuild/protobuf/wkt";
import { deployments, describe, metrics, models } from "../api";
import type { Deployment, Model } from "../gen/slipway/v1/resources_pb";
import type { Page } from "../main";
import { signInAgain } from "../main";
import { h, notice, stateName } from "../ui";

const MAX_MODELS = 100;

export function modelsPage(): Page {
  const status = notice();
  const body = h("tbody");
  const element = h(
    "section",
    { class: "page", "data-page": "models" },
    h("h1", {}, "Models"),
    status.element,
    h(
      "table",
      { class: "models" },
      h("thead", {}, h("tr", {}, ...["Name", "ID", "Production", "Development", "States", "Requests/s (1 min)"].map((t) => h("th", {}, t)))),
      body,
    ),
  );
  let stopped = false;
  const load = async () => {
    try {
      const listed = await models.listModels({ pageSize: MAX_MODELS });
      const rows = await Promise.all(listed.models.map(row));
      if (stopped) return;
      body.replaceChildren(...rows);
      if (!rows.length) body.append(h("tr", {}, h("td", { colspan: 6 }, "No models yet: ", h("code", {}, "slipway push"), " creates one.")));
    } catch (error) {
      if (!signInAgain(error)) status.error(describe(error));
    }
  };
  void load();
  const timer = window.setInterval(() => void load(), 5000);
  return {
    element,
    dispose() {
      stopped = true;
      window.clearInterval(timer);
    },
  };
}

async function row(model: Model): Promise<HTMLElement> {
  const listed = await deployments.listDeployments({ modelId: model.id, pageSize: 100 });
  const byId = new Map(listed.deployments.map((d) => [d.id, d]));
  const counts = new Map<string, number>();
  for (const d of listed.deployments) counts.set(stateName(d.state), (counts.get(stateName(d.state)) ?? 0) + 1);
  const summary = [...counts].map(([state, n]) => `${n} ${state}`).join(", ");
  const rate = await requestRate(listed.deployments);
  const link = (d: Deployment | undefined) =>
    d ? h("a", { href: `#/deployment/${d.id}` }, `${d.name} (${d.id})`) : "—";
  return h(
    "tr",
    { "data-model": model.id },
    h("td", {}, h("a", { href: `#/model/${model.id}` }, model.name)),
    h("td", {}, h("code", {}, model.id)),
    h("td", {}, link(byId.get(model.productionDeploymentId))),
    h("td", {}, link(byId.get(model.developmentDeploymentId))),
    h("td", {}, summary),
    h("td", { class: "number" }, rate.toFixed(2)),
  );
}

async function requestRate(list: Deployment[]): Promise<number> {
  const window = create(DurationSchema, { seconds: 60n });
  const answers = await Promise.all(
    list.map((d) =>
      metrics
        .getDeploymentMetrics({ deploymentId: d.id, window, step: window })
        .then((m) => m.points.reduce((sum, p) => sum + Number(p.responses2xx + p.responses4xx + p.responses5xx), 0))
        .catch(() => 0),
    ),
  );
  return answers.reduce((a, b) => a + b, 0) / 60;
}
