// The expiry timeline: one row per certificate, a bar from its start to its expiry, the
// warning window before expiry shaded, and a line at today. Drawn as SVG from the data.

import {day, svg} from "./dom.js";

const ROW = 26;
const LABEL = 230;
const WIDTH = 900;
const AXIS = 30;
const DAY = 86400000;

export function timeline(records, warnDays) {
  const now = Date.now();
  const starts = records.map((r) => Date.parse(r.not_before));
  const ends = records.map((r) => Date.parse(r.not_after));
  const from = Math.min(now, ...starts) - DAY;
  const to = Math.max(now + 30 * DAY, ...ends) + DAY;
  const x = (t) => LABEL + ((t - from) / (to - from)) * (WIDTH - LABEL - 10);
  const height = AXIS + ROW * records.length + 10;
  const chart = svg("svg", {
    viewBox: `0 0 ${WIDTH} ${height}`, role: "img", id: "timeline", class: "timeline",
    "aria-labelledby": "timeline-title timeline-desc",
  },
  svg("title", {id: "timeline-title"}, "Certificate expiry timeline"),
  svg("desc", {id: "timeline-desc"}, records.map((r) => `${r.name} expires ${day(r.not_after)}`).join("; ")));
  // month ticks along the top
  const tick = new Date(from);
  tick.setUTCDate(1);
  tick.setUTCHours(0, 0, 0, 0);
  for (tick.setUTCMonth(tick.getUTCMonth() + 1); tick.getTime() < to; tick.setUTCMonth(tick.getUTCMonth() + 1)) {
    const at = x(tick.getTime());
    if (at > WIDTH - 60) break;
    chart.append(
      svg("line", {x1: at, x2: at, y1: AXIS - 6, y2: height, class: "grid"}),
      svg("text", {x: at + 3, y: AXIS - 10, class: "tick"}, tick.toISOString().slice(0, 7)));
  }
  records.forEach((r, i) => {
    const y = AXIS + i * ROW;
    const start = x(Date.parse(r.not_before));
    const end = x(Date.parse(r.not_after));
    const warnFrom = Math.max(start, x(Date.parse(r.not_after) - warnDays * DAY));
    chart.append(svg("g", {class: `row ${r.status}`, "data-name": r.name},
      svg("text", {x: 4, y: y + 17, class: "label"}, r.name),
      svg("rect", {x: start, y: y + 5, width: Math.max(1, end - start), height: ROW - 10, class: "valid"}),
      svg("rect", {x: warnFrom, y: y + 5, width: Math.max(1, end - warnFrom), height: ROW - 10, class: "warn"}),
      svg("text", {x: Math.min(end + 4, WIDTH - 70), y: y + 17, class: "tick"}, day(r.not_after))));
  });
  const today = x(now);
  chart.append(
    svg("line", {x1: today, x2: today, y1: AXIS - 6, y2: height, class: "now"}),
    svg("text", {x: today + 3, y: height - 2, class: "now-label"}, "today"));
  return chart;
}
