// The dashboard's entry: sign-in (the key kept in this tab's session storage), then a hash router:
//   #/            overview: cluster, submit from a preset, jobs
//   #/jobs/<id>   one job: live curves, trajectories, eval table and predictions, events, artifacts
// Each view returns a function that stops its timers and streams when the page moves on.

import { Unauthorized, api, clearKey, getKey, setKey } from './api.js';
import { h } from './dom.js';
import { jobView } from './job.js';
import { overviewView } from './overview.js';

const $ = (id) => document.getElementById(id);
let stopView = () => {};

function showLogin(message) {
  stopView();
  stopView = () => {};
  $('view').replaceChildren();
  $('nav').hidden = true;
  $('login').hidden = false;
  $('login-error').hidden = !message;
  $('login-error').textContent = message || '';
  $('api-key').focus();
}

async function signIn(event) {
  event.preventDefault();
  setKey($('api-key').value.trim());
  try {
    await api('/jobs');
  } catch (err) {
    clearKey();
    showLogin(err instanceof Unauthorized ? 'That key was refused (401).' : String(err.message || err));
    return;
  }
  $('api-key').value = '';
  route();
}

function onFailure(err) {
  if (err instanceof Unauthorized) {
    clearKey();
    showLogin('The key was refused; sign in again.');
    return true;
  }
  return false;
}

function route() {
  if (!getKey()) {
    showLogin();
    return;
  }
  stopView();
  $('login').hidden = true;
  $('nav').hidden = false;
  const view = $('view');
  view.replaceChildren();
  const match = location.hash.match(/^#\/jobs\/(.+)$/);
  const context = { onFailure, go: (hash) => { location.hash = hash; } };
  try {
    stopView = match ? jobView(view, decodeURIComponent(match[1]), context) : overviewView(view, context);
  } catch (err) {
    view.append(h('p', { class: 'error' }, String(err)));
    stopView = () => {};
  }
}

$('login-form').addEventListener('submit', signIn);
$('sign-out').addEventListener('click', () => { clearKey(); showLogin(); });
window.addEventListener('hashchange', route);
route();
