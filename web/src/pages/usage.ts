// Usage and billing: replica-seconds per deployment, deleted deployments included and marked.
import { deployments, describe } from "../api";
import type { UsageRecord } from "../gen/slipway/v1/resources_pb";
import type { Page } from "../main";
import { signInAgain } from "../main";
import { h, notice } from "../ui";

const MAX_PAGES = 20;
const DAYS = 31;

export function usagePage(): Page {
  const status = notice();
  const body = h("tbody");
  const total = h("td", { class: "number" });
  const daily = h("tbody");
  const element = h(
    "section",
    { class: "page", "data-page": "usage" },
    h("h1", {}, "Usage and billing"),
    status.element,
    h(
      "table",
      { class: "usage" },
      h("thead", {}, h("tr", {}, ...["Model", "Deployment", "ID", "Replica-seconds", "Replica-hours", "Replica starts", ""].map((t) => h("th", {}, t)))),
      body,
      h("tfoot", {}, h("tr", {}, h("td", { colspan: 3 }, "Total"), total, h("td", { colspan: 3 }))),
    ),
    h("h2", {}, `Per day (UTC, last ${DAYS} days)`),
    h(
      "table",
      { class: "usage-days" },
      h("thead", {}, h("tr", {}, ...["Day", "Model", "Deployment", "ID", "Replica-seconds", "Replica starts", ""].map((t) => h("th", {}, t)))),
      daily,
    ),
  );
  void (async () => {
    try {
      const records: UsageRecord[] = [];
      let pageToken = "";
      for (let page = 0; page < MAX_PAGES; page++) {
        const answer = await deployments.listUsageRecords({ pageSize: 500, pageToken, days: DAYS });
        records.push(...answer.usageRecords);
        pageToken = answer.nextPageToken;
        if (!pageToken) break;
      }
      body.replaceChildren(
        ...records.map((u) =>
          h(
            "tr",
            { "data-usage": u.deploymentId, class: u.deploymentDeleted ? "deleted" : undefined },
            h("td", {}, h("a", { href: `#/model/${u.modelId}` }, u.modelId)),
            h("td", {}, u.deploymentName),
            h("td", {}, h("code", {}, u.deploymentId)),
            h("td", { class: "number" }, u.replicaSeconds.toFixed(1)),
            h("td", { class: "number" }, (u.replicaSeconds / 3600).toFixed(3)),
            h("td", { class: "number" }, String(u.replicaStarts)),
            h("td", {}, u.deploymentDeleted ? h("span", { class: "badge deleted", "data-badge": "deleted" }, "deleted") : ""),
          ),
        ),
      );
      total.textContent = records.reduce((sum, u) => sum + u.replicaSeconds, 0).toFixed(1);
      const days = records.flatMap((u) => u.days.map((day) => ({ u, day })));
      days.sort((a, b) => b.day.date.localeCompare(a.day.date) || a.u.deploymentId.localeCompare(b.u.deploymentId));
      daily.replaceChildren(
        ...days.map(({ u, day }) =>
          h(
            "tr",
            { "data-usage-day": `${day.date}/${u.deploymentId}`, class: u.deploymentDeleted ? "deleted" : undefined },
            h("td", {}, day.date),
            h("td", {}, u.modelId),
            h("td", {}, u.deploymentName),
            h("td", {}, h("code", {}, u.deploymentId)),
            h("td", { class: "number" }, day.replicaSeconds.toFixed(1)),
            h("td", { class: "number" }, String(day.replicaStarts)),
            h("td", {}, u.deploymentDeleted ? h("span", { class: "badge deleted" }, "deleted") : ""),
          ),
        ),
      );
    } catch (error) {
      if (!signInAgain(error)) status.error(describe(error));
    }
  })();
  return { element, dispose() {} };
}
