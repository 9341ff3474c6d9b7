// tugboot console: the live parts. Pages work without it; with it the event view fills in as
// things happen (server-sent events) and a rollout's page follows its transitions. Values are
// only ever put into the page as text (textContent), never as markup.
(function () {
  'use strict';
  var table = document.querySelector('[data-live-events]');
  var rollout = document.querySelector('[data-live-rollout]');
  var status = document.querySelector('[data-live-status]');
  if (!table && !rollout) { return; }

  function say(text, on) {
    if (!status) { return; }
    status.textContent = text;
    status.classList.toggle('on', !!on);
  }

  function cell(tr, text, cls) {
    var td = document.createElement('td');
    if (cls) { td.className = cls; }
    td.textContent = text;
    tr.appendChild(td);
    return td;
  }

  function addRow(r) {
    var tr = document.createElement('tr');
    tr.className = 'tone-' + r.tone;
    cell(tr, new Date(r.at_ms).toISOString().replace('T', ' ').slice(0, 19), 'when');
    var kind = cell(tr, '');
    var badge = document.createElement('span');
    badge.className = 'badge ' + r.tone;
    badge.textContent = r.kind;
    kind.appendChild(badge);
    var who = cell(tr, '');
    if (r.href && r.href.indexOf('/console/') === 0) {
      var a = document.createElement('a');
      a.href = r.href;
      a.textContent = r.who;
      who.appendChild(a);
    } else {
      who.textContent = r.who;
    }
    cell(tr, r.text);
    table.insertBefore(tr, table.firstChild);
    while (table.rows.length > 500) { table.deleteRow(table.rows.length - 1); }
    var empty = document.querySelector('[data-live-empty]');
    if (empty) { empty.remove(); }
  }

  var source = new EventSource('/console/events/stream');
  source.onopen = function () { say('● live', true); };
  source.onerror = function () { say('reconnecting…', false); };
  source.addEventListener('lagged', function (e) {
    say('● live (' + e.data + ' skipped)', true);
  });
  source.addEventListener('row', function (e) {
    var r;
    try { r = JSON.parse(e.data); } catch (err) { return; }
    if (table) { addRow(r); }
    if (rollout && r.href === rollout.getAttribute('data-live-rollout')) {
      source.close();
      window.location.reload();
    }
  });
}());
