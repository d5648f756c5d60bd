/**
 * A small SVG writer for the benchmark chart: a grid of panels, one per metric, each with its own
 * scale, bars at the median and a whisker from min to max. No dependencies; the output is plain SVG 1.1
 * text that browsers and GitHub render.
 */

export interface Bar {
  label: string;
  value: number;
  min?: number;
  max?: number;
  color: string;
}

export interface Panel {
  title: string;
  unit: string;
  /** "higher is better" or "lower is better", shown under the title. */
  better?: 'higher' | 'lower';
  bars: Bar[];
  /** A note under the bars, e.g. the ratio. */
  note?: string;
}

export const COLORS = { lgnet: '#2b6cb0', qemu: '#9c4221', c: '#4a5568', dpdk: '#2f855a' } as const;

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');

function fmt(v: number): string {
  if (!Number.isFinite(v)) return 'n/a';
  const a = Math.abs(v);
  if (a >= 100) return v.toFixed(0);
  if (a >= 10) return v.toFixed(1);
  if (a >= 1) return v.toFixed(2);
  return v.toPrecision(2);
}

/** A "nice" upper bound for an axis. */
function niceMax(v: number): number {
  if (!(v > 0)) return 1;
  const e = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * e >= v) return m * e;
  return 10 * e;
}

export function renderChart(o: { title: string; subtitle?: string; panels: Panel[]; columns?: number }): string {
  const cols = o.columns ?? 4;
  const pw = 260;
  const ph = 230;
  const top = o.subtitle ? 70 : 50;
  const rows = Math.ceil(o.panels.length / cols);
  const W = cols * pw + 20;
  const H = top + rows * ph + 20;
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="Helvetica, Arial, sans-serif">`);
  out.push(`<rect x="0" y="0" width="${W}" height="${H}" fill="#ffffff"/>`);
  out.push(`<text x="${W / 2}" y="28" text-anchor="middle" font-size="18" font-weight="bold">${esc(o.title)}</text>`);
  if (o.subtitle) out.push(`<text x="${W / 2}" y="50" text-anchor="middle" font-size="12" fill="#4a5568">${esc(o.subtitle)}</text>`);
  o.panels.forEach((p, i) => {
    const x0 = 10 + (i % cols) * pw;
    const y0 = top + Math.floor(i / cols) * ph;
    const plotX = x0 + 48;
    const plotW = pw - 64;
    const plotY = y0 + 40;
    const plotH = ph - 100;
    out.push(`<g>`);
    out.push(`<rect x="${x0 + 2}" y="${y0}" width="${pw - 8}" height="${ph - 10}" fill="#f7fafc" stroke="#e2e8f0"/>`);
    out.push(`<text x="${x0 + pw / 2 - 4}" y="${y0 + 17}" text-anchor="middle" font-size="12" font-weight="bold">${esc(p.title)}</text>`);
    out.push(`<text x="${x0 + pw / 2 - 4}" y="${y0 + 31}" text-anchor="middle" font-size="10" fill="#718096">${esc(p.unit)}${p.better ? ` · ${p.better} is better` : ''}</text>`);
    const vmax = niceMax(Math.max(...p.bars.map((b) => (Number.isFinite(b.max ?? NaN) ? b.max! : b.value)).filter((v) => Number.isFinite(v)), 0));
    const y = (v: number) => plotY + plotH - (Math.max(0, v) / vmax) * plotH;
    for (const f of [0, 0.5, 1]) {
      const yy = y(f * vmax);
      out.push(`<line x1="${plotX}" y1="${yy}" x2="${plotX + plotW}" y2="${yy}" stroke="#cbd5e0" stroke-width="${f === 0 ? 1 : 0.5}"/>`);
      out.push(`<text x="${plotX - 4}" y="${yy + 3}" text-anchor="end" font-size="9" fill="#718096">${fmt(f * vmax)}</text>`);
    }
    const n = p.bars.length;
    const slot = plotW / n;
    const bw = Math.min(46, slot * 0.6);
    p.bars.forEach((b, j) => {
      const cx = plotX + slot * (j + 0.5);
      if (Number.isFinite(b.value)) {
        out.push(`<rect x="${cx - bw / 2}" y="${y(b.value)}" width="${bw}" height="${plotY + plotH - y(b.value)}" fill="${b.color}"><title>${esc(`${b.label}: ${fmt(b.value)} ${p.unit}`)}</title></rect>`);
        out.push(`<text x="${cx}" y="${y(b.value) - 4}" text-anchor="middle" font-size="10">${fmt(b.value)}</text>`);
      } else {
        out.push(`<text x="${cx}" y="${plotY + plotH - 4}" text-anchor="middle" font-size="10" fill="#a0aec0">n/a</text>`);
      }
      if (Number.isFinite(b.min ?? NaN) && Number.isFinite(b.max ?? NaN) && b.max! > b.min!) {
        const x = cx + bw / 2 + 5;
        out.push(`<line x1="${x}" y1="${y(b.min!)}" x2="${x}" y2="${y(b.max!)}" stroke="#1a202c" stroke-width="1"/>`);
        out.push(`<line x1="${x - 3}" y1="${y(b.min!)}" x2="${x + 3}" y2="${y(b.min!)}" stroke="#1a202c"/>`);
        out.push(`<line x1="${x - 3}" y1="${y(b.max!)}" x2="${x + 3}" y2="${y(b.max!)}" stroke="#1a202c"/>`);
      }
      out.push(`<text x="${cx}" y="${plotY + plotH + 14}" text-anchor="middle" font-size="10">${esc(b.label)}</text>`);
    });
    if (p.note) out.push(`<text x="${x0 + pw / 2 - 4}" y="${y0 + ph - 22}" text-anchor="middle" font-size="11" fill="#2d3748">${esc(p.note)}</text>`);
    out.push(`</g>`);
  });
  out.push(`</svg>`);
  return out.join('\n') + '\n';
}

/** One time series of a line panel. */
export interface Series {
  label: string;
  color: string;
  /** [x, y] points, x ascending. */
  points: ReadonlyArray<readonly [number, number]>;
}

export interface LinePanel {
  title: string;
  unit: string;
  series: Series[];
  /** Vertical marks (e.g. reconnects), at these x. */
  marks?: number[];
  note?: string;
}

/** Panels of time series (the soak's chart): each panel its own y scale, x shared in `xUnit`. */
export function renderLines(o: { title: string; subtitle?: string; xUnit: string; panels: LinePanel[]; columns?: number }): string {
  const cols = o.columns ?? 2;
  const pw = 520;
  const ph = 260;
  const top = o.subtitle ? 70 : 50;
  const rows = Math.ceil(o.panels.length / cols);
  const W = cols * pw + 20;
  const H = top + rows * ph + 20;
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="Helvetica, Arial, sans-serif">`);
  out.push(`<rect x="0" y="0" width="${W}" height="${H}" fill="#ffffff"/>`);
  out.push(`<text x="${W / 2}" y="28" text-anchor="middle" font-size="18" font-weight="bold">${esc(o.title)}</text>`);
  if (o.subtitle) out.push(`<text x="${W / 2}" y="50" text-anchor="middle" font-size="12" fill="#4a5568">${esc(o.subtitle)}</text>`);
  o.panels.forEach((p, i) => {
    const x0 = 10 + (i % cols) * pw;
    const y0 = top + Math.floor(i / cols) * ph;
    const plotX = x0 + 56;
    const plotW = pw - 80;
    const plotY = y0 + 40;
    const plotH = ph - 90;
    const all = p.series.flatMap((s) => s.points);
    const xmax = niceMax(Math.max(...all.map((q) => q[0]), 0));
    const ys = all.map((q) => q[1]).filter((v) => Number.isFinite(v));
    const ymax = niceMax(Math.max(...ys, 0));
    const X = (v: number) => plotX + (v / xmax) * plotW;
    const Y = (v: number) => plotY + plotH - (Math.max(0, v) / ymax) * plotH;
    out.push(`<g>`);
    out.push(`<rect x="${x0 + 2}" y="${y0}" width="${pw - 8}" height="${ph - 10}" fill="#f7fafc" stroke="#e2e8f0"/>`);
    out.push(`<text x="${x0 + pw / 2 - 4}" y="${y0 + 17}" text-anchor="middle" font-size="12" font-weight="bold">${esc(p.title)}</text>`);
    out.push(`<text x="${x0 + pw / 2 - 4}" y="${y0 + 31}" text-anchor="middle" font-size="10" fill="#718096">${esc(p.unit)}</text>`);
    for (const f of [0, 0.5, 1]) {
      out.push(`<line x1="${plotX}" y1="${Y(f * ymax)}" x2="${plotX + plotW}" y2="${Y(f * ymax)}" stroke="#cbd5e0" stroke-width="${f === 0 ? 1 : 0.5}"/>`);
      out.push(`<text x="${plotX - 4}" y="${Y(f * ymax) + 3}" text-anchor="end" font-size="9" fill="#718096">${fmt(f * ymax)}</text>`);
      out.push(`<text x="${X(f * xmax)}" y="${plotY + plotH + 13}" text-anchor="middle" font-size="9" fill="#718096">${fmt(f * xmax)} ${esc(o.xUnit)}</text>`);
    }
    for (const m of p.marks ?? []) out.push(`<line x1="${X(m)}" y1="${plotY}" x2="${X(m)}" y2="${plotY + plotH}" stroke="#e53e3e" stroke-width="0.5" stroke-dasharray="3,3"/>`);
    p.series.forEach((s, j) => {
      const pts = s.points.filter((q) => Number.isFinite(q[1])).map((q) => `${X(q[0]).toFixed(1)},${Y(q[1]).toFixed(1)}`).join(' ');
      if (pts) out.push(`<polyline points="${pts}" fill="none" stroke="${s.color}" stroke-width="1.5"><title>${esc(s.label)}</title></polyline>`);
      out.push(`<rect x="${plotX + j * 150}" y="${plotY + plotH + 24}" width="10" height="10" fill="${s.color}"/>`);
      out.push(`<text x="${plotX + j * 150 + 14}" y="${plotY + plotH + 33}" font-size="10">${esc(s.label)}</text>`);
    });
    if (p.note) out.push(`<text x="${x0 + pw / 2 - 4}" y="${y0 + ph - 14}" text-anchor="middle" font-size="10" fill="#2d3748">${esc(p.note)}</text>`);
    out.push(`</g>`);
  });
  out.push(`</svg>`);
  return out.join('\n') + '\n';
}
