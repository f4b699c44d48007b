// The deployment page's logs panel, on LogService only: a live tail (TailLogs, a Connect
// server stream) and a request-ID search (ListLogs), both narrowed by a minimum level and
// the build-log toggle. At most MAX_LINES lines stay in the DOM (the oldest leave first);
// the stream is cancelled when the filters change, a search starts, or the page is left.
import { Code, ConnectError } from "@connectrpc/connect";
import { describe, logs } from "./api";
import { LogLevel, LogOrder, LogStream, type LogRecord } from "./gen/slipway/v1/log_service_pb";
import { signInAgain } from "./main";
import { h, time } from "./ui";

export const MAX_LINES = 500;
const INITIAL_LINES = 100;
const RETRY_MS = 2000;
// What ListLogs accepts for a request ID (log_service.proto): checked here to say so early.
const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

const LEVELS: [LogLevel, string][] = [
  [LogLevel.UNSPECIFIED, "All levels"],
  [LogLevel.DEBUG, "Debug and above"],
  [LogLevel.INFO, "Info and above"],
  [LogLevel.WARNING, "Warning and above"],
  [LogLevel.ERROR, "Error and above"],
  [LogLevel.CRITICAL, "Critical"],
];

function levelName(level: LogLevel): string {
  return (LogLevel[level] ?? "UNSPECIFIED").toLowerCase();
}

function line(record: LogRecord): HTMLElement {
  return h(
    "li",
    { class: `log log-${levelName(record.level)}`, "data-level": levelName(record.level), "data-request-id": record.requestId },
    h("span", { class: "log-time" }, time(record.time)),
    " ",
    h("span", { class: "log-level" }, levelName(record.level)),
    " ",
    h("span", { class: "log-stream" }, (LogStream[record.stream] ?? "").toLowerCase()),
    record.requestId ? [" ", h("code", { class: "log-request" }, record.requestId)] : null,
    " ",
    h("span", { class: "log-message" }, record.message),
  );
}

export function logsPanel(deploymentId: string): { element: HTMLElement; dispose(): void } {
  const level = h("select", { name: "level" }, ...LEVELS.map(([value, label]) => h("option", { value }, label)));
  const build = h("input", { type: "checkbox", name: "build" });
  const requestId = h("input", { type: "search", name: "requestId", placeholder: "Request ID (X-Slipway-Request-Id)", maxlength: 128 });
  const search = h("button", { type: "submit" }, "Search");
  const live = h("button", { type: "button", name: "live" }, "Live tail");
  const state = h("span", { class: "hint", "data-logs-state": "" });
  const list = h("ol", { class: "logs", "data-logs": "" });
  const form = h(
    "form",
    { class: "log-controls", "data-form": "logs" },
    h("label", {}, "Level ", level),
    h("label", {}, build, " Build log"),
    requestId,
    search,
    live,
    state,
  );
  const element = h("div", { class: "logs-panel", "data-logs-panel": "" }, form, list);

  let running: AbortController | null = null;
  let retry = 0;
  let disposed = false;

  const say = (mode: string, text: string) => {
    element.dataset.mode = mode;
    state.dataset.logsState = mode;
    state.textContent = text;
  };
  const filter = (id = "") => ({
    deploymentId,
    minLevel: Number(level.value) as LogLevel,
    build: build.checked,
    requestId: id,
  });
  const stop = () => {
    running?.abort();
    running = null;
    window.clearTimeout(retry);
  };
  const append = (record: LogRecord) => {
    list.append(line(record));
    while (list.childElementCount > MAX_LINES) list.firstElementChild?.remove();
  };

  const tail = async () => {
    stop();
    if (disposed) return;
    const controller = (running = new AbortController());
    list.replaceChildren();
    say("following", "Following new lines…");
    try {
      for await (const answer of logs.tailLogs({ filter: filter(), initialCount: INITIAL_LINES }, { signal: controller.signal })) {
        if (answer.record) append(answer.record);
      }
      if (!controller.signal.aborted) throw new ConnectError("the log stream ended", Code.Unavailable);
    } catch (error) {
      if (controller.signal.aborted || disposed) return;
      if (signInAgain(error)) return;
      say("error", `Log tail stopped: ${describe(error)}; retrying`);
      retry = window.setTimeout(() => void tail(), RETRY_MS);
    }
  };

  const find = async (id: string) => {
    stop();
    const controller = (running = new AbortController());
    list.replaceChildren();
    if (!REQUEST_ID.test(id)) return say("error", "A request ID is 1-128 characters of A-Z a-z 0-9 . _ : -");
    say("searching", `Searching request ${id}…`);
    try {
      const answer = await logs.listLogs(
        { filter: filter(id), order: LogOrder.OLDEST_FIRST, pageSize: MAX_LINES },
        { signal: controller.signal },
      );
      if (controller.signal.aborted) return;
      answer.records.forEach(append);
      const more = answer.nextPageToken ? ` (the first ${MAX_LINES}; slipway logs --request-id shows all)` : "";
      say("found", `${answer.records.length} line(s) of request ${id}${more}`);
    } catch (error) {
      if (controller.signal.aborted || signInAgain(error)) return;
      say("error", `Search refused: ${describe(error)}`);
    }
  };

  form.onsubmit = (event) => {
    event.preventDefault();
    const id = requestId.value.trim();
    void (id ? find(id) : tail());
  };
  live.onclick = () => {
    requestId.value = "";
    void tail();
  };
  const again = () => void (element.dataset.mode === "found" && requestId.value.trim() ? find(requestId.value.trim()) : tail());
  level.onchange = again;
  build.onchange = again;
  void tail();
  return {
    element,
    dispose() {
      disposed = true;
      stop();
    },
  };
}
