// The overview: the cluster (services' ready state, Redis, queue depth, live workers), a job submitted
// from a preset (GET /presets), and the jobs list (kind, state, progress, started, duration).

import { api, submitJob } from './api.js';
import { badge, clock, dot, duration, errorBox, fill, h, progressBar, section } from './dom.js';

function clusterPanel(data) {
  const services = h('table', { class: 'grid' },
    h('thead', {}, h('tr', {}, h('th', {}, ''), h('th', {}, 'service'), h('th', {}, 'URL'), h('th', {}, 'state'))),
    h('tbody', {}, [...data.services, data.redis].map((s) => h('tr', { 'data-service': s.name, 'data-ready': String(s.ready) },
      h('td', {}, dot(s.ready)), h('td', {}, s.name), h('td', { class: 'mono' }, s.url || '–'), h('td', {}, s.detail)))));
  const q = data.queue;
  const queue = h('div', { class: 'stats', id: 'queue' },
    stat('waiting', q ? q.waiting : '–', 'episodes no worker has claimed'),
    stat('in flight', q ? q.pending : '–', 'claimed, not finished'),
    stat('dead letters', q ? q.dead : '–', 'failed every attempt', q && q.dead > 0),
    stat('workers alive', data.workers.length, 'heartbeat within the visibility timeout'));
  const workers = data.workers.length
    ? h('table', { class: 'grid', id: 'workers' },
      h('thead', {}, h('tr', {}, h('th', {}, 'worker'), h('th', {}, 'episodes done'), h('th', {}, 'policies loaded'),
        h('th', {}, 'last heartbeat'))),
      h('tbody', {}, data.workers.map((w) => h('tr', { 'data-worker': w.name },
        h('td', {}, w.name), h('td', {}, w.completed), h('td', { class: 'mono' }, w.policies.join(', ') || '–'),
        h('td', {}, `${w.seen_s}s ago`)))))
    : h('p', { class: 'muted', id: 'workers' }, 'No live rollout worker: episodes wait in the queue until one starts.');
  return [h('div', { class: 'two' }, services, queue), workers];
}

function stat(label, value, title, alarm = false) {
  return h('div', { class: alarm ? 'stat alarm' : 'stat', title }, h('strong', {}, String(value)), h('span', {}, label));
}

function jobsTable(jobs, go) {
  if (!jobs.length) return h('p', { class: 'muted' }, 'No jobs yet: submit one above.');
  return h('table', { class: 'grid jobs' },
    h('thead', {}, h('tr', {}, ['job', 'kind', 'state', 'progress', 'step', 'started', 'duration'].map((t) => h('th', {}, t)))),
    h('tbody', {}, jobs.map((job) => h('tr', { class: 'job-row', 'data-job-id': job.id, onclick: () => go(`#/jobs/${encodeURIComponent(job.id)}`) },
      h('td', { class: 'mono' }, h('a', { href: `#/jobs/${encodeURIComponent(job.id)}` }, job.id)),
      h('td', {}, job.kind), h('td', {}, badge(job.state)), h('td', {}, progressBar(job.progress)),
      h('td', {}, job.step), h('td', {}, job.started_at ? clock(job.started_at) : h('span', { class: 'muted' }, `submitted ${clock(job.created_at)}`)), h('td', {}, duration(job))))));
}

function submitForm(presets, ctx) {
  const select = h('select', { id: 'preset' }, presets.map((p) => h('option', { value: p.name }, `${p.title} (${p.kind})`)));
  const doc = h('p', { class: 'muted', id: 'preset-doc' });
  const config = h('textarea', { id: 'preset-config', rows: 8, spellcheck: 'false' });
  const message = h('p', { class: 'error', hidden: true });
  const pick = () => {
    const p = presets.find((x) => x.name === select.value);
    doc.textContent = p ? p.doc : '';
    config.value = p ? JSON.stringify(p.config, null, 2) : '';
  };
  select.addEventListener('change', pick);
  const submit = async () => {
    message.hidden = true;
    const preset = presets.find((x) => x.name === select.value);
    try {
      const { id } = await submitJob(preset.kind, JSON.parse(config.value));
      ctx.go(`#/jobs/${encodeURIComponent(id)}`);
    } catch (err) {
      if (ctx.onFailure(err)) return;
      message.hidden = false;
      message.textContent = String(err.message || err);
    }
  };
  pick();
  return [h('div', { class: 'row' }, select, h('button', { id: 'submit-preset', type: 'button', onclick: submit }, 'Submit')),
    doc, h('details', {}, h('summary', {}, 'config (edit before submitting)'), config), message];
}

export function overviewView(root, ctx) {
  const cluster = section('cluster', 'Cluster', h('p', { class: 'muted' }, 'probing services…'));
  const submit = section('submit', 'Submit a job', h('p', { class: 'muted' }, 'loading presets…'));
  const jobs = section('jobs', 'Jobs', h('p', { class: 'muted' }, 'loading…'));
  root.append(cluster, jobs, submit);
  let alive = true;

  const refresh = async () => {
    const [c, j] = await Promise.allSettled([api('/cluster'), api('/jobs')]);
    if (!alive) return;
    for (const [box, result, render] of [[cluster, c, (d) => clusterPanel(d)], [jobs, j, (d) => jobsTable(d.jobs, ctx.go)]]) {
      if (result.status === 'rejected' && ctx.onFailure(result.reason)) return;
      fill(box, box.firstChild, result.status === 'fulfilled' ? render(result.value) : errorBox(result.reason));
    }
  };
  api('/presets').then((d) => { if (alive) fill(submit, submit.firstChild, submitForm(d.presets, ctx)); })
    .catch((err) => { if (!ctx.onFailure(err)) submit.append(errorBox(err)); });
  refresh();
  const timer = setInterval(refresh, 2000);
  return () => { alive = false; clearInterval(timer); };
}
