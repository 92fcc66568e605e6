// One trajectory as a person reads it: the question and gold answers, the model's turns (its <think>,
// <search> and <answer> blocks marked) apart from the environment's observations, the searches, and the
// reward with its parts. Used for RL samples (trajectories/step_NNNN.jsonl) and eval predictions.

import { h, num } from './dom.js';

const BLOCKS = /(<(think|search|answer)>[\s\S]*?<\/\2>)/g;

function policyText(text) {
  const out = [];
  let last = 0;
  for (const m of text.matchAll(BLOCKS)) {
    if (m.index > last) out.push(text.slice(last, m.index));
    out.push(h('span', { class: `tag-${m[2]}` }, m[0]));
    last = m.index + m[0].length;
  }
  if (last < text.length) out.push(text.slice(last));
  return out;
}

export function turns(list) {
  return h('div', { class: 'turns' }, (list || []).map((t, i) => (t.role === 'policy'
    ? h('div', { class: 'turn policy', 'data-role': 'policy' }, h('span', { class: 'who' }, `model · turn ${Math.ceil((i + 1) / 2)}`),
      h('pre', {}, policyText(t.text)))
    : h('details', { class: 'turn observation', 'data-role': 'observation', open: t.text.length < 600 },
      h('summary', { class: 'who' }, `observation · ${t.text.length} chars`), h('pre', {}, t.text)))));
}

export function searches(list) {
  if (!list || !list.length) return h('span', { class: 'muted' }, 'no searches');
  return h('span', { class: 'searches' }, list.map((q) => h('span', { class: 'chip search-chip' }, q)));
}

function parts(reward, rewardParts) {
  const shown = Object.entries(rewardParts || {}).filter(([k]) => ['format', 'answer', 'penalty'].includes(k));
  return h('span', { class: 'reward' }, h('strong', {}, `reward ${num(reward)}`),
    shown.length ? ` (${shown.map(([k, v]) => `${k} ${num(v)}`).join(', ')})` : '');
}

function scores(s) {
  return h('span', { class: 'scores' }, Object.entries(s || {}).map(([k, v]) =>
    h('span', { class: v >= 0.5 ? 'chip good' : 'chip bad' }, `${k} ${num(v, 2)}`)));
}

export function trajectoryCard(t) {
  return h('article', { class: 'trajectory', 'data-episode': t.episode_id },
    h('header', {}, h('span', { class: 'mono muted' }, `step ${t.step} · ${t.episode_id} · policy v${t.policy_version}`),
      parts(t.reward, t.reward_parts), scores(t.scores), h('span', { class: 'muted' }, `finish: ${t.finish_reason || '–'}`)),
    h('p', { class: 'question' }, h('b', {}, 'Q '), t.question || '(prompt below)',
      h('span', { class: 'gold' }, ` gold: ${(t.ground_truth || []).join(' | ')}`)),
    h('details', { class: 'prompt' }, h('summary', {}, 'prompt the model saw'), h('pre', {}, t.prompt || '')),
    turns(t.turns),
    h('p', {}, h('b', {}, 'searches '), searches(t.searches), h('b', {}, '  answer '),
      h('span', { class: 'answer' }, t.answer == null ? '(none)' : t.answer)),
    t.error ? h('p', { class: 'error' }, t.error) : null);
}

const plural = (n, word) => `${n} ${word}${n === 1 ? '' : 's'}`;

export function predictionColumn(p, metric) {
  if (!p) return h('div', { class: 'pred missing' }, h('span', { class: 'muted' }, 'not run'));
  const score = (p.scores || {})[metric] ?? 0;
  return h('div', { class: 'pred', 'data-method': p.method },
    h('div', { class: 'pred-head' }, h('b', {}, p.method), h('span', { class: score >= 0.5 ? 'chip good' : 'chip bad' }, `${metric} ${num(score, 2)}`)),
    h('p', {}, h('b', {}, 'answer '), h('span', { class: 'answer' }, p.prediction == null ? '(none)' : p.prediction)),
    h('p', {}, (p.searches || []).length || !p.n_searches ? searches(p.searches)
      : h('span', { class: 'muted' }, `${plural(p.n_searches, 'retrieval')} with the question (documents in the prompt)`)),
    h('details', {}, h('summary', {}, `trajectory · ${plural(p.n_turns, 'turn')} · ${p.finish_reason}`), turns(p.turns)),
    p.error ? h('p', { class: 'error' }, p.error) : null);
}
