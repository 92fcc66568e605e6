// Small DOM and formatting helpers. Text always goes in as text nodes (model output is never HTML).

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value == null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child == null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

// Replace ``el``'s children (nested lists flattened, null / false left out).
export function fill(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter((c) => c != null && c !== false));
  return el;
}

export const TERMINAL = new Set(['succeeded', 'failed', 'cancelled', 'interrupted']);

export const badge = (state) => h('span', { class: `badge state-${state}`, 'data-state': state }, state);

export const dot = (ok) => h('span', { class: ok ? 'dot ok' : 'dot down', title: ok ? 'ready' : 'not ready' });

export function clock(seconds) {
  if (!seconds) return '–';
  const d = new Date(seconds * 1000);
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString() : d.toLocaleString();
}

export function duration(job) {
  if (!job.started_at) return '–';
  const end = job.finished_at || (TERMINAL.has(job.state) ? job.updated_at : Date.now() / 1000);
  let s = Math.max(0, Math.round(end - job.started_at));
  const hours = Math.floor(s / 3600);
  s -= hours * 3600;
  const minutes = Math.floor(s / 60);
  s -= minutes * 60;
  return hours ? `${hours}h ${minutes}m` : minutes ? `${minutes}m ${s}s` : `${s}s`;
}

export const num = (v, digits = 3) => (typeof v === 'number' ? (Number.isInteger(v) ? String(v) : v.toFixed(digits)) : '–');

export const pct = (v) => (typeof v === 'number' ? `${(100 * v).toFixed(1)}` : '–');

export function progressBar(value) {
  const p = Math.round(100 * (value || 0));
  return h('span', { class: 'progress', title: `${p}%` }, h('span', { style: `width:${p}%` }), h('em', {}, `${p}%`));
}

export function section(id, title, ...children) {
  return h('section', { id, class: 'card' }, h('h2', {}, title), ...children);
}

export function errorBox(err) {
  return h('p', { class: 'error' }, String(err && err.message ? err.message : err));
}
