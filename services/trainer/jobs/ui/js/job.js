// One job: its state (cancel / submit again), live curves over the SSE stream, the sampled trajectories
// of each RL step, the eval table and predictions, its events and its artifacts for download.

import { cancelJob, download, getJob, artifactJSONL, streamEvents, submitJob } from './api.js';
import { Curves } from './charts.js';
import { TERMINAL, badge, clock, duration, errorBox, fill, h, num, progressBar, section } from './dom.js';
import { evalSection } from './eval.js';
import { trajectoryCard } from './trajectory.js';

const HEADLINE = ['reward_mean', 'accuracy', 'loss', 'pg_loss', 'turns_mean'];
const MAX_EVENTS = 200;

function headPanel(job, ctx, onChange) {
  const cancel = async (event) => {
    if (!window.confirm(`Cancel job ${job.id}?`)) return;
    event.target.disabled = true;
    try { onChange(await cancelJob(job.id)); } catch (err) { if (!ctx.onFailure(err)) alert(err.message || err); }
  };
  const again = async () => {
    try { ctx.go(`#/jobs/${encodeURIComponent((await submitJob(job.kind, job.config)).id)}`); } catch (err) {
      if (!ctx.onFailure(err)) alert(err.message || err);
    }
  };
  const facts = [['kind', job.kind], ['state', badge(job.state)], ['progress', progressBar(job.progress)], ['step', job.step],
    ['submitted', clock(job.created_at)], ['started', clock(job.started_at)], ['duration', duration(job)]];
  return [
    h('dl', { class: 'facts', id: 'job-state', 'data-state': job.state }, facts.map(([k, v]) => h('div', {}, h('dt', {}, k), h('dd', {}, v)))),
    job.error ? h('p', { class: 'error', id: 'job-error' }, job.error) : null,
    h('div', { class: 'row' },
      TERMINAL.has(job.state) ? null : h('button', { id: 'cancel-job', class: 'danger', type: 'button', onclick: cancel }, 'Cancel job'),
      h('button', { id: 'resubmit', type: 'button', onclick: again }, 'Submit again'),
      h('a', { href: '#/' }, '← all jobs')),
    h('details', {}, h('summary', {}, 'config'), h('pre', { class: 'mono' }, JSON.stringify(job.config, null, 2))),
  ];
}

function eventLine(e) {
  const when = new Date((e.time || 0) * 1000).toLocaleTimeString();
  let text = e.message || '';
  if (e.type === 'state') text = `${e.state}${e.error ? `: ${e.error}` : ''}`;
  if (e.type === 'step') {
    const m = e.metrics || {};
    text = `step ${e.step} ${HEADLINE.filter((k) => k in m).map((k) => `· ${k} ${num(m[k])}`).join(' ')}`;
  }
  return h('li', { class: `event ev-${e.type}` }, h('span', { class: 'mono muted' }, when), h('b', {}, e.type), text);
}

function artifactList(job, ctx) {
  if (!job.artifacts.length) return h('p', { class: 'muted' }, 'No artifacts yet.');
  return h('table', { class: 'grid' }, h('tbody', {}, job.artifacts.map((name) => h('tr', {},
    h('td', { class: 'mono' }, name),
    h('td', {}, h('button', { class: 'download', type: 'button', 'data-name': name,
      onclick: () => download(job.id, name).catch((err) => { if (!ctx.onFailure(err)) alert(err.message || err); }) }, 'Download'))))));
}

class Trajectories {
  constructor(box, jobId, ctx) {
    Object.assign(this, { box, jobId, ctx, files: [], chosen: null });
    this.select = h('select', { id: 'traj-step', onchange: () => { this.chosen = this.select.value; this.load(this.chosen); } });
    this.list = h('div', { id: 'traj-list' });
    box.append(h('p', { class: 'muted', id: 'traj-hint' }, 'Each RL step keeps a few episodes; they appear after the first step.'));
  }

  update(artifacts) {
    const files = artifacts.filter((a) => a.startsWith('trajectories/')).sort();
    if (files.length === this.files.length) return;
    this.files = files;
    this.box.querySelector('#traj-hint')?.remove();
    if (!this.select.isConnected) this.box.append(h('div', { class: 'row' }, h('label', {}, 'step ', this.select)), this.list);
    this.select.replaceChildren(...files.map((f) => h('option', { value: f }, f.replace(/^trajectories\/step_0*/, 'step ').replace('.jsonl', ''))));
    const target = this.chosen || files[files.length - 1];
    this.select.value = target;
    if (!this.chosen) this.load(target);
  }

  async load(name) {
    try {
      const rows = await artifactJSONL(this.jobId, name);
      this.list.replaceChildren(...rows.map(trajectoryCard));
    } catch (err) {
      if (!this.ctx.onFailure(err)) this.list.replaceChildren(errorBox(err));
    }
  }
}

export function jobView(root, id, ctx) {
  const head = section('job', h('span', { class: 'mono' }, id), h('p', { class: 'muted' }, 'loading…'));
  const curvesBox = section('curves', 'Curves');
  const charts = h('div', { class: 'charts', id: 'charts' });
  curvesBox.append(charts);
  const trajBox = section('trajectories', 'Sample trajectories');
  const evalBox = section('eval', 'Evaluation', h('p', { class: 'muted' }, 'The report appears when the job ends.'));
  const eventsList = h('ol', { class: 'events', id: 'events-list', reversed: true });
  const eventsBox = section('events', 'Events', eventsList);
  const artifactsBox = section('artifacts', 'Artifacts');
  root.append(head, curvesBox, trajBox, evalBox, eventsBox, artifactsBox);

  const curves = new Curves(charts);
  const trajectories = new Trajectories(trajBox, id, ctx);
  const abort = new AbortController();
  let job = null;
  let evalShown = false;
  let busy = false;

  const show = (status) => {
    job = status;
    fill(head, head.firstChild, headPanel(job, ctx, show));
    fill(artifactsBox, artifactsBox.firstChild, artifactList(job, ctx));
    trajBox.hidden = job.kind !== 'rl';
    evalBox.hidden = job.kind !== 'eval';
    curvesBox.hidden = ['eval', 'ramp', 'coldstart'].includes(job.kind) && !Object.keys(curves.charts).length;
    if (job.kind === 'rl') trajectories.update(job.artifacts);
    if (job.kind === 'eval' && TERMINAL.has(job.state) && !evalShown) {
      evalShown = true;
      evalSection(evalBox, id, job.artifacts).catch((err) => evalBox.append(errorBox(err)));
    }
  };
  const refresh = async () => {
    if (busy) return;
    busy = true;
    try { show(await getJob(id)); } catch (err) { if (!ctx.onFailure(err)) head.append(errorBox(err)); } finally { busy = false; }
  };
  let lastId = '0';
  let ended = false; // the stream brought the job's final state
  let drawing = false;
  const draw = () => {  // at most one redraw per frame, however many steps a replay brings
    if (drawing) return;
    drawing = true;
    requestAnimationFrame(() => { drawing = false; curves.render(); });
  };
  const onEvent = (e) => {
    lastId = e.id || lastId;
    if (e.type === 'state' && TERMINAL.has(e.state)) ended = true;
    if (e.type === 'step') {
      curves.add(e.step, e.metrics);
      draw();
      refresh();
    } else if (e.type === 'state') {
      refresh();
    }
    eventsList.prepend(eventLine(e));
    while (eventsList.children.length > MAX_EVENTS) eventsList.lastChild.remove();
  };

  const follow = async () => {
    const failed = await streamEvents(id, onEvent, abort.signal, lastId).then(() => null, (err) => err);
    if (abort.signal.aborted || (failed && ctx.onFailure(failed))) return;
    eventsBox.querySelector('.stream-error')?.remove();
    if (failed) eventsBox.append(h('p', { class: 'error stream-error' }, `event stream: ${failed.message || failed}`));
    curves.render();
    refresh();
    const over = ended || (job && TERMINAL.has(job.state)) || String(failed && failed.message).startsWith('404');
    if (!over) setTimeout(follow, 2000); // dropped (a restart, a proxy): resume after the last event seen
  };
  refresh();
  follow();
  const timer = setInterval(() => { if (!job || !TERMINAL.has(job.state)) refresh(); }, 2000);
  return () => { abort.abort(); clearInterval(timer); curves.destroy(); };
}
