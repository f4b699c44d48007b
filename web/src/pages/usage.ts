// Usage and billing: replica-seconds per deployment, deleted deployments included and marked.
import { deployments, describe } from "../api";
import type { UsageRecord } from "../gen/slipway/v1/resources_pb";
import type { Page } from "../main";
import { signInAgain } from "../main";
import { h, notice } from "../ui";

const MAX_PAGES = 20;

export function usagePage(): Page {
  const status = notice();
  const body = h("tbody");
  const total = h("td", { class: "number" });
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
  );
  void (async () => {
    try {
      const records: UsageRecord[] = [];
      let pageToken = "";
      for (let page = 0; page < MAX_PAGES; page++) {
        const answer = await deployments.listUsageRecords({ pageSize: 500, pageToken });
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
    } catch (error) {
      if (!signInAgain(error)) status.error(describe(error));
    }
  })();
  return { element, dispose() {} };
}
