// Live training curves: the job's step events (our metric names, as metrics.jsonl has them) drawn with
// the vendored uPlot (global `uPlot`). A panel appears once one of its metrics has a value; each panel
// says how many steps it shows in data-points (what the browser test reads).

import { h, num } from './dom.js';

export const PANELS = [
  { name: 'reward', title: 'reward (mean and its parts)', keys: ['reward_mean', 'reward_format', 'reward_answer', 'reward_penalty'] },
  { name: 'accuracy', title: 'accuracy', keys: ['accuracy', 'f1', 'cover_em'] },
  { name: 'loss', title: 'loss', keys: ['pg_loss', 'loss'] },
  { name: 'kl', title: 'KL', keys: ['kl', 'ppo_kl'] },
  { name: 'entropy', title: 'entropy', keys: ['entropy'] },
  { name: 'length', title: 'response length (tokens)', keys: ['response_length_mean', 'policy_tokens_mean'] },
  { name: 'turns', title: 'turns and searches per episode', keys: ['turns_mean', 'searches_mean'] },
  { name: 'curriculum', title: 'curriculum: p_noise, mask stage', keys: ['p_noise', 'mask_stage', 'max_masks'] },
];

const COLORS = ['#2563eb', '#16a34a', '#d97706', '#dc2626', '#7c3aed', '#0891b2'];

export class Curves {
  constructor(root) {
    this.root = root;
    this.steps = [];
    this.values = {}; // metric -> value per index of this.steps (null: not logged at that step)
    this.charts = {}; // panel name -> { plot, keys, box }
    this.onResize = () => this.resize();
    window.addEventListener('resize', this.onResize);
  }

  add(step, metrics) {
    let i = this.steps.indexOf(step);
    if (i < 0) {
      this.steps.push(step);
      i = this.steps.length - 1;
      for (const key of Object.keys(this.values)) this.values[key].push(null);
    }
    for (const [key, value] of Object.entries(metrics || {})) {
      if (typeof value !== 'number') continue;
      if (!this.values[key]) this.values[key] = this.steps.map(() => null);
      this.values[key][i] = value;
    }
  }

  render() {
    for (const panel of PANELS) {
      const keys = panel.keys.filter((k) => this.values[k] && this.values[k].some((v) => v !== null));
      if (!keys.length) continue;
      const current = this.charts[panel.name];
      const data = [this.steps.slice(), ...keys.map((k) => this.values[k].slice())];
      if (current && current.keys.join() === keys.join()) {
        current.plot.setData(data);
      } else {
        if (current) { current.plot.destroy(); current.box.remove(); }
        this.charts[panel.name] = this.create(panel, keys, data);
      }
      const box = this.charts[panel.name].box;
      box.dataset.points = String(this.steps.filter((_, i) => keys.some((k) => this.values[k][i] !== null)).length);
      box.querySelector('.latest').textContent = keys.map((k) => `${k} ${num(lastValue(this.values[k]))}`).join(' · ');
    }
    if (!Object.keys(this.charts).length && !this.root.querySelector('.muted')) {
      this.root.append(h('p', { class: 'muted' }, 'No step metrics yet: the curves appear with the first step.'));
    } else if (Object.keys(this.charts).length) {
      this.root.querySelector('.muted')?.remove();
    }
  }

  create(panel, keys, data) {
    const box = h('div', { class: 'chart', 'data-panel': panel.name },
      h('h3', {}, panel.title), h('div', { class: 'plot' }), h('p', { class: 'latest mono' }));
    const order = PANELS.findIndex((p) => p.name === panel.name);
    const after = [...this.root.querySelectorAll('.chart')].find((el) => PANELS.findIndex((p) => p.name === el.dataset.panel) > order);
    this.root.insertBefore(box, after || null);
    const opts = {
      width: this.width(), height: 190,
      scales: { x: { time: false, range: (u, min, max) => (min === max ? [min - 1, max + 1] : [min, max]) },
        y: { range: padded } },
      axes: [{ label: 'step' }, {}],
      series: [{ label: 'step' }, ...keys.map((k, i) => ({
        label: k, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true,
        points: { show: true, size: 6, fill: COLORS[i % COLORS.length] },
      }))],
      legend: { live: true },
    };
    // eslint-disable-next-line no-undef
    const plot = new uPlot(opts, data, box.querySelector('.plot'));
    return { plot, keys, box };
  }

  width() {
    const w = this.root.clientWidth || 900;
    return Math.max(280, Math.floor(w > 760 ? w / 2 - 28 : w - 16));
  }

  resize() {
    for (const c of Object.values(this.charts)) c.plot.setSize({ width: this.width(), height: 190 });
  }

  destroy() {
    window.removeEventListener('resize', this.onResize);
    for (const c of Object.values(this.charts)) c.plot.destroy();
  }
}

// y range: the data with a little room, and a unit band around a flat line (uPlot's default is 0..100)
function padded(u, min, max) {
  if (min == null || max == null) return [0, 1];
  if (min === max) return [min - (Math.abs(min) || 1) * 0.5, max + (Math.abs(max) || 1) * 0.5];
  const pad = (max - min) * 0.08;
  return [min - pad, max + pad];
}

function lastValue(values) {
  for (let i = values.length - 1; i >= 0; i -= 1) if (values[i] !== null) return values[i];
  return null;
}
