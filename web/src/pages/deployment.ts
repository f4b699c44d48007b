// Deployment: its settings (and the autoscaling form), its events, and charts of the last
// hour from MetricService, and its logs (a live tail and a request-ID search, logs.ts).
import { create } from "@bufbuild/protobuf";
import { DurationSchema } from "@bufbuild/protobuf/wkt";
import { deployments, describe, metrics } from "../api";
import { charts } from "../charts";
import { logsPanel } from "../logs";
import { EventOrder } from "../gen/slipway/v1/deployment_service_pb";
import type { AutoscalingSettings, Deployment } from "../gen/slipway/v1/resources_pb";
import type { Page } from "../main";
import { signInAgain } from "../main";
import { h, kindName, notice, stateBadge, time } from "../ui";

const SETTINGS: [keyof AutoscalingSettings & string, string, string][] = [
  ["minReplica", "min_replica", "Min replicas"],
  ["maxReplica", "max_replica", "Max replicas"],
  ["autoscalingWindow", "autoscaling_window", "Autoscaling window (s)"],
  ["scaleDownDelay", "scale_down_delay", "Scale-down delay (s)"],
  ["concurrencyTarget", "concurrency_target", "Concurrency target"],
  ["targetUtilizationPercentage", "target_utilization_percentage", "Target utilization (%)"],
];

export function deploymentPage(deploymentId: string): Page {
  const status = notice();
  const title = h("h1", {}, "Deployment ", h("code", {}, deploymentId));
  const settings = h("dl", { class: "settings" });
  const form = h("form", { class: "autoscaling", "data-form": "autoscaling" });
  const events = h("tbody");
  const figures = charts();
  const logPanel = logsPanel(deploymentId);
  const element = h(
    "section",
    { class: "page", "data-page": "deployment" },
    title,
    status.element,
    h("h2", {}, "Settings"),
    settings,
    h("h2", {}, "Autoscaling"),
    form,
    h("h2", {}, "Last hour"),
    figures.element,
    h("h2", {}, "Events"),
    h("table", { class: "events" }, h("thead", {}, h("tr", {}, h("th", {}, "Time"), h("th", {}, "Type"), h("th", {}, "Message"))), events),
    h("h2", {}, "Live logs"),
    logPanel.element,
  );
  let stopped = false;
  let formFor = "";

  const showDeployment = (d: Deployment) => {
    title.replaceChildren(`Deployment ${d.name} `, h("code", {}, d.id), " ", stateBadge(d.state));
    const rows: [string, Node | string][] = [
      ["Model", h("a", { href: `#/model/${d.modelId}` }, d.modelId)],
      ["Kind", kindName(d.kind) + (d.isProduction ? " (production)" : "")],
      ["Active", d.active ? "yes" : "no"],
      ["State", d.statusMessage ? `${stateBadge(d.state).textContent}: ${d.statusMessage}` : stateBadge(d.state)],
      ["Replicas ready / desired", `${d.readyReplicas} / ${d.desiredReplicas}`],
      ["Revision", String(d.revision)],
      ["Package", h("code", {}, d.packageDigest)],
      ["Created", time(d.createTime)],
      ["Updated", time(d.updateTime)],
    ];
    if (d.sourceDeploymentId) rows.push(["Promoted from", h("a", { href: `#/deployment/${d.sourceDeploymentId}` }, d.sourceDeploymentId)]);
    settings.replaceChildren(...rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
    if (formFor !== `${d.id}:${d.updateTime?.seconds}`) {
      formFor = `${d.id}:${d.updateTime?.seconds}`;
      buildForm(d);
    }
  };

  const buildForm = (d: Deployment) => {
    const current = d.autoscalingSettings;
    const inputs = SETTINGS.map(([field, , label]) => {
      const input = h("input", { type: "number", name: field, min: 0, value: current ? Number(current[field] as number) : 0 });
      return { field, input, label: h("label", {}, label, input) };
    });
    form.replaceChildren(...inputs.map((i) => i.label), h("button", { type: "submit" }, "Save autoscaling"));
    form.onsubmit = (event) => {
      event.preventDefault();
      const changed = inputs.filter((i) => Number(i.input.value) !== Number(current?.[i.field] ?? 0));
      const autoscalingSettings: Record<string, number> = {};
      for (const i of inputs) autoscalingSettings[i.field] = Number(i.input.value);
      const paths = changed.map((i) => `autoscaling_settings.${SETTINGS.find(([f]) => f === i.field)![1]}`);
      status.clear();
      if (!paths.length) return status.ok("Nothing changed");
      deployments
        .updateDeployment({ deployment: { id: d.id, autoscalingSettings }, updateMask: { paths } })
        .then((answer) => {
          status.ok(`Saved autoscaling of ${d.name}`);
          if (answer.deployment) showDeployment(answer.deployment);
        })
        .catch((error) => {
          if (!signInAgain(error)) status.error(`Autoscaling of ${d.name} refused: ${describe(error)}`);
        });
    };
  };

  const refresh = async () => {
    try {
      const [{ deployment }, listed, figuresAnswer] = await Promise.all([
        deployments.getDeployment({ deploymentId }),
        deployments.listEvents({ deploymentId, pageSize: 50, order: EventOrder.NEWEST_FIRST }),
        metrics.getDeploymentMetrics({ deploymentId, window: create(DurationSchema, { seconds: 3600n }) }),
      ]);
      if (stopped) return;
      if (deployment) showDeployment(deployment);
      events.replaceChildren(
        ...listed.events.map((e) => h("tr", {}, h("td", {}, time(e.createTime)), h("td", {}, h("code", {}, e.type)), h("td", {}, e.message))),
      );
      figures.update(figuresAnswer.points);
    } catch (error) {
      if (!signInAgain(error)) status.error(describe(error));
    }
  };
  void refresh();
  const timer = window.setInterval(() => void refresh(), 3000);
  return {
    element,
    dispose() {
      stopped = true;
      window.clearInterval(timer);
      logPanel.dispose();
    },
  };
}
