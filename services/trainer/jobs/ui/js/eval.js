// An eval job's results: the report's table (method x metric, per dataset, as report.md) and its
// predictions (eval/predictions.jsonl): filter right / wrong on one metric, two methods side by side on
// the same question.

import { artifactJSONL, artifactText } from './api.js';
import { fill, h, num, pct } from './dom.js';
import { predictionColumn } from './trajectory.js';

const METRICS = ['em', 'acc', 'cover_em', 'f1', 'recall'];
const COLUMNS = [['n', 'n'], ['answered', 'answered'], ['em', 'EM'], ['acc', 'acc'], ['cover_em', 'cover-EM'],
  ['f1', 'F1'], ['recall', 'recall'], ['turns', 'turns'], ['searches', 'searches'], ['search_failures', 'failed searches'],
  ['errors', 'errors']];
const PERCENT = new Set(['em', 'acc', 'cover_em', 'f1', 'recall', 'answered']);
const RIGHT = 0.5; // a score at least this counts as right (EM / acc / cover-EM are 0 or 1)

export function reportTables(report) {
  const datasets = [...new Set(Object.values(report.methods).flatMap((m) => Object.keys(m.datasets)))].sort();
  // report.metrics (newer reports): which definition each column is, to set it beside a paper's table
  const definitions = Object.values(report.metrics || {});
  return [h('p', { class: 'muted' }, `model ${report.model} · scores in % · ${num(report.elapsed_s, 0)}s`),
    definitions.length ? h('p', { class: 'muted metric-definitions' },
      `answered = ended with a non-empty answer; ${definitions.join('; ')}`) : null,
    ...datasets.map((d) => h('div', {}, h('h3', {}, d), h('table', { class: 'grid eval-table', 'data-dataset': d },
      h('thead', {}, h('tr', {}, h('th', {}, 'method'), COLUMNS.map(([, title]) => h('th', {}, title)))),
      h('tbody', {}, Object.entries(report.methods).filter(([, m]) => m.datasets[d]).map(([method, m]) =>
        h('tr', { 'data-method': method }, h('td', { class: 'mono' }, method),
          COLUMNS.map(([key]) => h('td', {}, PERCENT.has(key) ? pct(m.datasets[d][key]) : num(m.datasets[d][key], 2))))))))),
  ];
}

function select(id, options, value) {
  return h('select', { id }, options.map(([v, label]) => h('option', { value: v, selected: v === value }, label)));
}

export function predictionsBrowser(rows) {
  const methods = [...new Set(rows.map((r) => r.method))];
  const byQuestion = new Map();
  for (const r of rows) {
    const key = `${r.dataset}:${r.id}`;
    if (!byQuestion.has(key)) byQuestion.set(key, { question: r.question, gold: r.gold, dataset: r.dataset, id: r.id, by: {} });
    byQuestion.get(key).by[r.method] = r;
  }
  const metric = select('pred-metric', METRICS.map((m) => [m, m]), 'f1');
  const methodA = select('pred-a', methods.map((m) => [m, m]), methods[0]);
  const methodB = select('pred-b', [['', '— none —'], ...methods.map((m) => [m, m])], methods[1] || '');
  const filter = select('pred-filter', [['all', 'all'], ['right', `right (≥ ${RIGHT})`], ['wrong', 'wrong']], 'all');
  const count = h('span', { class: 'muted', id: 'pred-count' });
  const list = h('div', { id: 'pred-list' });

  const draw = () => {
    const m = metric.value;
    const shown = [...byQuestion.values()].filter((q) => {
      const p = q.by[methodA.value];
      if (!p || filter.value === 'all') return Boolean(p);
      const right = ((p.scores || {})[m] ?? 0) >= RIGHT;
      return filter.value === 'right' ? right : !right;
    });
    count.textContent = `${shown.length} of ${byQuestion.size} questions`;
    fill(list, shown.map((q) => h('article', { class: 'prediction', 'data-question': `${q.dataset}:${q.id}` },
      h('p', { class: 'question' }, h('span', { class: 'mono muted' }, `${q.dataset}:${q.id} `), q.question,
        h('span', { class: 'gold' }, ` gold: ${(q.gold || []).join(' | ')}`)),
      h('div', { class: methodB.value ? 'side-by-side' : '' }, predictionColumn(q.by[methodA.value], m),
        methodB.value ? predictionColumn(q.by[methodB.value], m) : null))));
  };
  for (const el of [metric, methodA, methodB, filter]) el.addEventListener('change', draw);
  draw();
  return [h('div', { class: 'row controls' }, h('label', {}, 'metric ', metric), h('label', {}, 'method ', methodA),
    h('label', {}, 'show ', filter), h('label', {}, 'beside ', methodB), count), list];
}

export async function evalSection(box, jobId, artifacts) {
  const parts = [];
  if (artifacts.includes('eval/report.json')) {
    const report = JSON.parse(await artifactText(jobId, 'eval/report.json'));
    parts.push(...reportTables(report));
  }
  if (artifacts.includes('eval/predictions.jsonl')) {
    const rows = await artifactJSONL(jobId, 'eval/predictions.jsonl');
    parts.push(h('h3', {}, 'Predictions'), ...predictionsBrowser(rows));
  }
  fill(box, box.firstChild, parts.length ? parts : h('p', { class: 'muted' }, 'The report appears when the job ends.'));
}
