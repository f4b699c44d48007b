// Keys (admin): create (the key is shown once), list, revoke.
import { create } from "@bufbuild/protobuf";
import { DurationSchema } from "@bufbuild/protobuf/wkt";
import { describe, keys } from "../api";
import { KeyScope, type ApiKey } from "../gen/slipway/v1/key_service_pb";
import type { Page } from "../main";
import { signInAgain } from "../main";
import { copyable, h, notice, time } from "../ui";

const SCOPES: [KeyScope, string][] = [
  [KeyScope.INFERENCE, "inference"],
  [KeyScope.DEPLOY, "deploy"],
  [KeyScope.METRICS, "metrics"],
  [KeyScope.ADMIN, "admin"],
];

export function keysPage(): Page {
  const status = notice();
  const body = h("tbody");
  const created = h("div", { class: "created-key" });
  const name = h("input", { name: "key-name", placeholder: "my-app", required: true });
  const scope = h("select", { name: "key-scope" }, ...SCOPES.map(([value, label]) => h("option", { value }, label)));
  const modelIds = h("input", { name: "key-models", placeholder: "model IDs or names, comma-separated (inference only)", size: 40 });
  const days = h("input", { name: "key-days", type: "number", min: 0, placeholder: "days (empty: never expires)" });
  const form = h(
    "form",
    { class: "inline create-key" },
    h("label", {}, "Name ", name),
    h("label", {}, "Scope ", scope),
    modelIds,
    days,
    h("button", { type: "submit" }, "Create key"),
  );
  const showRevoked = h("input", { type: "checkbox", name: "show-revoked" });
  const element = h(
    "section",
    { class: "page", "data-page": "keys" },
    h("h1", {}, "API keys"),
    status.element,
    form,
    created,
    h("label", {}, showRevoked, " show revoked keys"),
    h(
      "table",
      { class: "keys" },
      h("thead", {}, h("tr", {}, ...["Name", "Key", "Scope", "Models", "Created", "Last used", "Expires", ""].map((t) => h("th", {}, t)))),
      body,
    ),
  );
  const load = async () => {
    try {
      const answer = await keys.listKeys({ pageSize: 1000, showRevoked: showRevoked.checked });
      body.replaceChildren(...answer.keys.map(row));
    } catch (error) {
      if (!signInAgain(error)) status.error(describe(error));
    }
  };
  const row = (key: ApiKey) => {
    const revoke = h("button", { "data-action": "revoke", class: "danger" }, "Revoke");
    revoke.addEventListener("click", () => {
      status.clear();
      keys
        .revokeKey({ keyId: key.id })
        .then(() => {
          status.ok(`Revoked ${key.displayPrefix}…`);
          void load();
        })
        .catch((error) => status.error(`Revoking ${key.name} refused: ${describe(error)}`));
    });
    return h(
      "tr",
      { "data-key": key.id, class: key.revokeTime ? "revoked" : undefined },
      h("td", {}, key.name),
      h("td", {}, h("code", {}, `${key.displayPrefix}…`)),
      h("td", {}, (KeyScope[key.scope] ?? "").replace(/^KEY_SCOPE_/, "").toLowerCase()),
      h("td", {}, key.modelIds.join(", ")),
      h("td", {}, time(key.createTime)),
      h("td", {}, time(key.lastUsedTime)),
      h("td", {}, time(key.expireTime)),
      h("td", {}, key.revokeTime ? `revoked ${time(key.revokeTime)}` : revoke),
    );
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    status.clear();
    created.replaceChildren();
    const ttlDays = Number(days.value);
    keys
      .createKey({
        name: name.value.trim(),
        scope: Number(scope.value) as KeyScope,
        modelIds: modelIds.value.split(",").map((m) => m.trim()).filter(Boolean),
        ttl: ttlDays > 0 ? create(DurationSchema, { seconds: BigInt(Math.round(ttlDays * 86400)) }) : undefined,
      })
      .then((answer) => {
        created.replaceChildren(
          h("p", {}, `Key ${answer.key?.name} created. Copy it now: it is shown only once.`),
          copyable(answer.secretKey),
        );
        void load();
      })
      .catch((error) => {
        if (!signInAgain(error)) status.error(`Creating the key refused: ${describe(error)}`);
      });
  });
  showRevoked.addEventListener("change", () => void load());
  void load();
  return { element, dispose() {} };
}
