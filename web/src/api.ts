// The dashboard's only way to the platform: the public management API over Connect JSON
// (the same RPCs, auth, statuses and ErrorInfo reasons as gRPC), through a client
// generated from the protos (web/src/gen, by protoc-gen-es).
import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { DeploymentService } from "./gen/slipway/v1/deployment_service_pb";
import { KeyService } from "./gen/slipway/v1/key_service_pb";
import { LogService } from "./gen/slipway/v1/log_service_pb";
import { MetricService } from "./gen/slipway/v1/metric_service_pb";
import { ModelService } from "./gen/slipway/v1/model_service_pb";

const KEY_ITEM = "slipway.apiKey";

export function apiKey(): string {
  return sessionStorage.getItem(KEY_ITEM) ?? "";
}

export function setApiKey(key: string): void {
  if (key) sessionStorage.setItem(KEY_ITEM, key);
  else sessionStorage.removeItem(KEY_ITEM);
}

/** A one-click sign-in link (`slipway up` prints one) carries the key in the URL fragment,
 * which never reaches a server or its logs: it moves to sessionStorage and leaves the URL. */
export function takeKeyFromFragment(): void {
  const match = /^#key=([^&]+)/.exec(location.hash);
  if (match) {
    setApiKey(decodeURIComponent(match[1]));
    history.replaceState(null, "", `${location.pathname}${location.search}#/models`);
  }
}

const authorize: Interceptor = (next) => async (request) => {
  const key = apiKey();
  if (key) request.header.set("Authorization", `Api-Key ${key}`);
  return next(request);
};

const transport = createConnectTransport({
  baseUrl: location.origin,
  useBinaryFormat: false, // JSON: what curl and the OpenAPI document show
  interceptors: [authorize],
});

export const models: Client<typeof ModelService> = createClient(ModelService, transport);
export const deployments: Client<typeof DeploymentService> = createClient(DeploymentService, transport);
export const keys: Client<typeof KeyService> = createClient(KeyService, transport);
export const metrics: Client<typeof MetricService> = createClient(MetricService, transport);
export const logs: Client<typeof LogService> = createClient(LogService, transport);

/** The machine-readable reason of a refusal (google.rpc.ErrorInfo, from the debug JSON the
 * controller sends with each detail). */
export function reasonOf(error: unknown): string {
  if (!(error instanceof ConnectError)) return "";
  for (const detail of error.details) {
    if ("debug" in detail && detail.type === "google.rpc.ErrorInfo") {
      const debug = detail.debug as { reason?: string } | undefined;
      if (debug?.reason) return debug.reason;
    }
  }
  return "";
}

/** What the API said, never a generic failure: its message and its reason. */
export function describe(error: unknown): string {
  if (error instanceof ConnectError) {
    const reason = reasonOf(error);
    return `${error.rawMessage || Code[error.code]}${reason ? ` (${reason})` : ""}`;
  }
  return error instanceof Error ? error.message : String(error);
}

export function needsSignIn(error: unknown): boolean {
  return error instanceof ConnectError && (error.code === Code.Unauthenticated);
}

export function isPermissionDenied(error: unknown): boolean {
  return error instanceof ConnectError && error.code === Code.PermissionDenied;
}

export interface DashboardConfig {
  gatewayHttpUrl: string;
}

let config: Promise<DashboardConfig> | null = null;

/** Where users call their models (the gateway's HTTP address, when the controller knows it). */
export function dashboardConfig(): Promise<DashboardConfig> {
  config ??= fetch("/dashboard.json")
    .then((response) => (response.ok ? response.json() : {}))
    .then((body: Partial<DashboardConfig>) => ({ gatewayHttpUrl: body.gatewayHttpUrl || "" }))
    .catch(() => ({ gatewayHttpUrl: "" }));
  return config;
}
