// /analytics.html: the summary drawn as plain SVG charts (no chart library):
// throughput over time, duration percentiles and success by agent. The window
// picker chooses 1h / 24h / 7d; task updates refresh it (debounced).
import { initPage, api, el, replaceChildren, debounce, onRealtime, formatMs, formatRate, summaryRate, ratePercent, reportError, newestOnly, STALE } from '../app.js';

const SVG = 'http://www.w3.org/2000/svg';

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) node.setAttribute(k, String(v));
  for (const c of children) if (c) node.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
  return node;
}

function currentWindow() {
  const checked = document.querySelector('input[name="window"]:checked');
  return checked ? checked.value : '24h';
}

function niceMax(v) {
  if (v <= 0) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

function emptyChart(container, text) {
  replaceChildren(container, el('p', { class: 'empty', text }));
}

const MINUTE = 60000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
/** Tick steps a reader expects on a time axis. */
const STEPS = [5 * MINUTE, 10 * MINUTE, 15 * MINUTE, 30 * MINUTE, HOUR, 2 * HOUR, 3 * HOUR, 6 * HOUR, 12 * HOUR, DAY, 2 * DAY];

function startOfDay(ms) {
  const d = new Date(ms);
  d.setHours(0, 0, 0, 0);
  return d.getTime();
}

/**
 * Even ticks between t0 and t1 at round local times (every 5 min … 2 days), as many as
 * fit in `room`; a tick at midnight is labelled with its date, the others with the time,
 * and no label appears twice.
 */
export function timeTicks(t0, t1, room) {
  const span = Math.max(1, t1 - t0);
  const step = STEPS.find((s) => span / s <= room) || STEPS[STEPS.length - 1];
  const ticks = [];
  // Steps of a day or more start at midnight; shorter ones at a multiple of the step from midnight.
  let t = startOfDay(t0);
  while (t < t0) t += step;
  for (; t <= t1; t += step) {
    const d = new Date(t);
    const midnight = d.getHours() === 0 && d.getMinutes() === 0;
    const label = midnight || step >= DAY
      ? d.toLocaleDateString(undefined, { month: 'short', day: 'numeric' })
      : d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit', hour12: false });
    ticks.push({ t, label });
  }
  // A window of exactly whole days that starts on a tick ends on one with the same time
  // of day (18:00 … 18:00 over 24 hours): keep the later one, so no label repeats.
  const later = new Set();
  return ticks.reverse().filter(({ label }) => !later.has(label) && later.add(label)).reverse();
}

/** Lines for submitted / completed / failed per time bucket, drawn at the chart's real width. */
function drawThroughput(container, series, win) {
  if (!series.length || series.every((p) => !p.submitted && !p.completed && !p.failed)) {
    emptyChart(container, 'No tasks in this window yet');
    return;
  }
  // One viewBox unit = one CSS pixel: text keeps its size on a phone.
  const W = Math.max(300, Math.round(container.clientWidth || 720)); const H = 240; const L = 40; const R = 16; const T = 12; const B = 28;
  const max = niceMax(Math.max(...series.map((p) => Math.max(p.submitted || 0, p.completed || 0, p.failed || 0))));
  const times = series.map((p) => new Date(p.t).getTime());
  const t0 = times[0]; const t1 = times[times.length - 1];
  const xt = (t) => L + (t1 === t0 ? (W - L - R) / 2 : ((t - t0) * (W - L - R)) / (t1 - t0));
  const x = (i) => xt(times[i]);
  const y = (v) => T + (H - T - B) * (1 - (v || 0) / max);
  const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart-svg', role: 'img', 'aria-label': `Throughput over the last ${win}` });
  // Whole-number steps: the counts are integers and max is 1, 2 or 5 × 10^n.
  const steps = [5, 4, 2, 1].find((n) => Number.isInteger(max / n));
  for (let i = 0; i <= steps; i += 1) {
    const v = (max * i) / steps;
    root.append(svg('line', { x1: L, x2: W - R, y1: y(v), y2: y(v), class: 'grid-line' }),
      svg('text', { x: L - 6, y: y(v) + 4, class: 'axis-label', 'text-anchor': 'end' }, String(Math.round(v * 10) / 10)));
  }
  // About 7 px per character of "Dec 12" / "18:00" plus a gap.
  const room = Math.max(2, Math.floor((W - L - R) / 64));
  for (const tick of timeTicks(t0, t1, room)) {
    const tx = xt(tick.t);
    const anchor = tx - L < 24 ? 'start' : W - R - tx < 24 ? 'end' : 'middle';
    root.append(svg('line', { x1: tx, x2: tx, y1: H - B, y2: H - B + 4, class: 'grid-line' }),
      svg('text', { x: tx, y: H - 8, class: 'axis-label', 'text-anchor': anchor }, tick.label));
  }
  for (const key of ['submitted', 'completed', 'failed']) {
    const points = series.map((p, i) => `${x(i).toFixed(1)},${y(p[key]).toFixed(1)}`).join(' ');
    root.append(svg('polyline', { points, class: `series series-${key}`, fill: 'none' }));
    series.forEach((p, i) => {
      if (!p[key]) return;
      const dot = svg('circle', { cx: x(i), cy: y(p[key]), r: 3, class: `dot series-${key}` });
      dot.append(svg('title', {}, `${new Date(p.t).toLocaleString()}: ${p[key]} ${key}`));
      root.append(dot);
    });
  }
  replaceChildren(container, root);
}

/** Horizontal bars for p50 / p95 / p99. */
function drawDurations(container, d) {
  const rows = [['p50', d && d.p50], ['p95', d && d.p95], ['p99', d && d.p99]];
  if (rows.every(([, v]) => v === null || v === undefined)) {
    emptyChart(container, 'No finished tasks in this window yet');
    return;
  }
  const max = Math.max(1, ...rows.map(([, v]) => Number(v) || 0));
  const W = Math.max(300, Math.round(container.clientWidth || 360)); const rowH = 34; const L = 44; const R = 90;
  const root = svg('svg', { viewBox: `0 0 ${W} ${rows.length * rowH + 8}`, class: 'chart-svg', role: 'img', 'aria-label': 'Task duration percentiles' });
  rows.forEach(([label, v], i) => {
    const yy = 6 + i * rowH;
    const w = v === null || v === undefined ? 0 : Math.max(2, ((W - L - R) * Number(v)) / max);
    root.append(
      svg('text', { x: 0, y: yy + 17, class: 'axis-label' }, label),
      svg('rect', { x: L, y: yy + 4, width: W - L - R, height: 18, rx: 4, class: 'bar-track' }),
      svg('rect', { x: L, y: yy + 4, width: w, height: 18, rx: 4, class: `bar bar-${label}` }),
      svg('text', { x: W - R + 8, y: yy + 17, class: 'value-label' }, formatMs(v)));
  });
  replaceChildren(container, root);
}

/** One bar per agent: success rate, with completed count and mean time. */
function drawAgents(container, agents) {
  if (!agents.length) {
    emptyChart(container, 'No agent has finished a task in this window yet');
    return;
  }
  const W = Math.max(300, Math.round(container.clientWidth || 360)); const rowH = 44; const R = 56;
  const root = svg('svg', { viewBox: `0 0 ${W} ${agents.length * rowH + 4}`, class: 'chart-svg', role: 'img', 'aria-label': 'Success rate by agent' });
  agents.forEach((a, i) => {
    const yy = 2 + i * rowH;
    const pct = ratePercent(a.success_rate) ?? 0;
    const g = svg('g', { 'data-agent-id': a.agent_id });
    g.append(
      svg('text', { x: 0, y: yy + 13, class: 'axis-label' }, `${a.name || a.agent_id} · ${a.completed ?? 0} done · ${formatMs(a.avg_ms)} avg`),
      svg('rect', { x: 0, y: yy + 20, width: W - R, height: 14, rx: 4, class: 'bar-track' }),
      svg('rect', { x: 0, y: yy + 20, width: Math.max(pct > 0 ? 2 : 0, ((W - R) * pct) / 100), height: 14, rx: 4, class: 'bar bar-success' }),
      svg('text', { x: W - R + 8, y: yy + 31, class: 'value-label' }, formatRate(a.success_rate)));
    root.append(g);
  });
  replaceChildren(container, root);
}

/** Tasks per minute, or per hour / day when that reads better (7 days of a few tasks). */
function formatThroughput(perMin) {
  if (!Number.isFinite(perMin)) return '—';
  if (perMin === 0) return '0/min';
  if (perMin >= 1) return `${perMin.toFixed(perMin >= 10 ? 0 : 1)}/min`;
  if (perMin * 60 >= 1) return `${(perMin * 60).toFixed(1)}/h`;
  return `${(perMin * 1440).toFixed(1)}/day`;
}

const fetchSummary = newestOnly((win) => api(`/api/v1/analytics/summary?window=${encodeURIComponent(win)}`));

async function load() {
  const win = currentWindow();
  const s = await fetchSummary(win);
  if (s === STALE || win !== currentWindow()) return;
  const tasks = (s && s.tasks) || {};
  document.getElementById('a-total').textContent = String(tasks.total ?? 0);
  document.getElementById('a-success').textContent = summaryRate(tasks);
  const tp = Number(tasks.throughput_per_min);
  document.getElementById('a-throughput').textContent = formatThroughput(tp);
  const agents = (s && s.agents) || {};
  document.getElementById('a-agents').textContent = `${agents.online ?? 0} / ${agents.total ?? 0}`;
  drawThroughput(document.getElementById('chart-throughput'), Array.isArray(s.timeseries) ? s.timeseries : [], win);
  drawDurations(document.getElementById('chart-durations'), tasks.duration_ms || {});
  drawAgents(document.getElementById('chart-agents'), Array.isArray(s.top_agents) ? s.top_agents : []);
}

const refresh = debounce(() => { load().catch(reportError); }, 500);

async function main() {
  await initPage('analytics');
  for (const input of document.querySelectorAll('input[name="window"]')) {
    input.addEventListener('change', () => { load().catch(reportError); });
  }
  onRealtime('task_update', refresh);
  onRealtime('agent_update', refresh);
  onRealtime('reset', refresh);
  // The throughput chart is drawn at its real width: redraw when that changes.
  let lastWidth = window.innerWidth;
  window.addEventListener('resize', () => { if (window.innerWidth !== lastWidth) { lastWidth = window.innerWidth; refresh(); } });
  await load().catch(reportError);
}

main();
