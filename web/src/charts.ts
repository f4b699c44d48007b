// The deployment page's charts (uPlot, bundled): answers per second by status class,
// latency quantiles, in-flight requests, replicas ready vs desired, and cold starts.
import uPlot from "uplot";
import type { MetricPoint } from "./gen/slipway/v1/metric_service_pb";
import { h } from "./ui";

interface Chart {
  title: string;
  series: { label: string; stroke: string; value: (p: MetricPoint, seconds: number) => number }[];
  unit: string;
}

const CHARTS: Chart[] = [
  {
    title: "Requests/s by status class",
    unit: "req/s",
    series: [
      { label: "2xx", stroke: "#2e7d32", value: (p, s) => Number(p.responses2xx) / s },
      { label: "4xx", stroke: "#f9a825", value: (p, s) => Number(p.responses4xx) / s },
      { label: "5xx", stroke: "#c62828", value: (p, s) => Number(p.responses5xx) / s },
    ],
  },
  {
    title: "Latency",
    unit: "ms",
    series: [
      { label: "p50", stroke: "#1565c0", value: (p) => p.latencyP50Seconds * 1000 },
      { label: "p90", stroke: "#6a1b9a", value: (p) => p.latencyP90Seconds * 1000 },
      { label: "p99", stroke: "#ad1457", value: (p) => p.latencyP99Seconds * 1000 },
    ],
  },
  { title: "In flight", unit: "requests", series: [{ label: "in flight", stroke: "#00838f", value: (p) => p.inFlight }] },
  {
    title: "Replicas",
    unit: "replicas",
    series: [
      { label: "ready", stroke: "#2e7d32", value: (p) => p.replicasReady },
      { label: "desired", stroke: "#757575", value: (p) => p.replicasDesired },
    ],
  },
  { title: "Cold starts", unit: "per step", series: [{ label: "cold starts", stroke: "#ef6c00", value: (p) => p.coldStarts }] },
];

export interface Charts {
  element: HTMLElement;
  update(points: MetricPoint[]): void;
}

/** Charts of the last `windowSeconds` (the x axis always spans it, ending now). */
export function charts(windowSeconds = 3600): Charts {
  const xRange = (): [number, number] => {
    const now = Date.now() / 1000;
    return [now - windowSeconds, now];
  };
  const element = h("div", { class: "charts" });
  const plots: { chart: Chart; plot: uPlot; box: HTMLElement }[] = [];
  for (const chart of CHARTS) {
    const box = h("figure", { class: "chart", "data-chart": chart.title, "data-points": 0 }, h("figcaption", {}, chart.title));
    element.append(box);
    const plot = new uPlot(
      {
        width: 520,
        height: 170,
        series: [{}, ...chart.series.map((s) => ({ label: s.label, stroke: s.stroke, width: 2, points: { show: true, size: 4 } }))],
        axes: [{}, { label: chart.unit, size: 60 }],
        scales: { x: { time: true, range: xRange }, y: { range: (_u, min, max) => [Math.min(0, min), Math.max(max, 1)] } },
      },
      [[], ...chart.series.map(() => [])],
      box,
    );
    plots.push({ chart, plot, box });
  }
  return {
    element,
    update(points) {
      const xs = points.map((p) => Number(p.startTime?.seconds ?? 0n));
      for (const { chart, plot, box } of plots) {
        const ys = chart.series.map((s) =>
          points.map((p) => s.value(p, Math.max(Number(p.duration?.seconds ?? 0n) + (p.duration?.nanos ?? 0) / 1e9, 1))),
        );
        plot.setData([xs, ...ys]);
        box.dataset.points = String(points.length);
        box.dataset.total = String(ys.flat().reduce((a, b) => a + b, 0));
      }
    },
  };
}
