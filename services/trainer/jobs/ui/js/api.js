// The trainer's API as the page uses it: the key from session storage as a bearer header on every call,
// artifacts as text / JSONL / downloads, and the job's SSE stream read with fetch (EventSource cannot send
// an Authorization header, and the key never goes into a URL).

const KEY = 'searchlab.trainer.key';

export const getKey = () => sessionStorage.getItem(KEY);
export const setKey = (key) => sessionStorage.setItem(KEY, key);
export const clearKey = () => sessionStorage.removeItem(KEY);

export class Unauthorized extends Error {}

export async function api(path, { method = 'GET', body, raw = false, signal, headers: extra = {} } = {}) {
  const headers = { ...extra, Authorization: `Bearer ${getKey() || ''}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(path, {
    method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (res.status === 401) throw new Unauthorized('missing or wrong API key');
  if (!res.ok) {
    let message = res.statusText;
    try { message = (await res.json()).error?.message || message; } catch { /* not JSON */ }
    throw new Error(`${res.status}: ${message}`);
  }
  return raw ? res : res.json();
}

const jobPath = (id) => `/jobs/${encodeURIComponent(id)}`;

export const artifactPath = (id, name) =>
  `${jobPath(id)}/artifacts/${name.split('/').map(encodeURIComponent).join('/')}`;

export async function artifactText(id, name) {
  return (await api(artifactPath(id, name), { raw: true })).text();
}

export async function artifactJSONL(id, name) {
  const text = await artifactText(id, name);
  return text.split('\n').filter((line) => line.trim()).map((line) => JSON.parse(line));
}

export async function download(id, name) {
  const blob = await (await api(artifactPath(id, name), { raw: true })).blob();
  const url = URL.createObjectURL(blob);
  const a = Object.assign(document.createElement('a'), { href: url, download: name.split('/').pop() });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 30000);
}

export const getJob = (id) => api(jobPath(id));
export const cancelJob = (id) => api(`${jobPath(id)}/cancel`, { method: 'POST' });
export const submitJob = (kind, config) => api('/jobs', { method: 'POST', body: { kind, config } });

// The job's events after ``lastId`` ('0': from the start), following live ones until the job ends.
export async function streamEvents(id, onEvent, signal, lastId = '0') {
  const res = await api(`${jobPath(id)}/events`, { raw: true, signal, headers: { 'Last-Event-ID': lastId } });
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim()).join('\n');
      if (data) onEvent(JSON.parse(data));
    }
  }
}
