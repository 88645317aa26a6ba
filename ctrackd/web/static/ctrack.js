/*! ctrack.js: dynamic number insertion and promo codes for ctrackd. See docs/snippet.md. */
(function (window, document) {
  'use strict';

  // A tracker must never break the page it is on: every entry point (the
  // start, timers, event listeners, the observer, XHR handlers) runs through
  // safe(), and on any failure the page simply keeps its own numbers.
  function safe(fn) {
    return function () {
      try { return fn.apply(this, arguments); } catch (e) { /* the page comes first */ }
    };
  }

  if (window.ctrack) return; // included twice: the first copy does the work
  var ns = window.ctrack = { number: null, code: null }; // the only global

  var TIMEOUT_MS = 3000;
  var RETRY_MIN = 30000, RETRY_MAX = 300000; // asking again after a failed renewal
  var KEY = 'ctrack_vid'; // the visitor id
  var VISITS = 'ctrack_visits'; // the last visit number the daemon gave this visitor
  var MARKED = '[data-ctrack],.ctrack-phone';
  var PROMO = '[data-ctrack-promo],.ctrack-promo'; // where the session's promo code is shown
  // The opt-out, and elements whose text is not shown or is the user's input.
  var OFF = '[data-ctrack-off],script,style,noscript,template,textarea,select';
  // Separators people write inside a phone number (NBSP and dashes included).
  var SEP = '[\\s().\\-\\u00a0\\u2010-\\u2015]{0,3}';
  // Any run of digits and separators: in marked elements, where the site
  // owner said "this is the number", the first run of 9-16 digits is swapped
  // whatever it holds. Shorter runs are hours and dates (09.00–18.00).
  var RUN = new RegExp('\\+?\\d(?:' + SEP + '\\d){5,}', 'g');

  var endpoint, pool, session, number, code, period, timer, starting, office, observer;
  // After a failed renewal: the backoff in ms (0 while a session is held),
  // and when the next try is due (Date ms).
  var retry = 0, due;
  var targets = {}; // digits of every number to replace: office numbers and our own earlier ones
  // What each swapped node showed before (a text node its text, a link its
  // href) and what we wrote: {o, s}. The page can be put back with it.
  var saved, keep = 500;

  function digitsOf(s) { return String(s == null ? '' : s).replace(/\D/g, ''); }
  function isDigit(c) { return c >= '0' && c <= '9'; }

  // Length of the country code that starts an E.164 digit string: 1 for +1
  // and +7, 2 for the listed codes, 3 otherwise (ITU's assignment).
  function ccLength(d) {
    return /^[17]/.test(d) ? 1 : /^(2[07]|3[0-469]|4[013-9]|5[1-8]|6[0-6]|8[1246]|9[0-58])/.test(d) ? 2 : 3;
  }

  // `oldText`, one occurrence of a phone number, rewritten to show `newNumber`
  // in the same form: international (+7 495...), national with a trunk
  // prefix (8 495..., 020...), or national without one ((495) ...). With
  // as many digits as before, each digit takes the place of an old one, so
  // spaces, brackets and dashes stay where they were. Any other count
  // (another country, another plan) shows the plain international number:
  // always right to dial, where a forced grouping would mislead.
  function format(oldText, newNumber) {
    var n = digitsOf(newNumber), old = digitsOf(oldText), cc = ccLength(n), nsn = n.slice(cc), d, i = 0;
    var first = old.charAt(0);
    if (/\+/.test(oldText) || (old.length === n.length && old.indexOf(n.slice(0, cc)) === 0)) {
      d = n;
    } else if ((first === '0' && nsn.charAt(0) !== '0') || (first === '8' && old.length === nsn.length + 1)) {
      d = first + nsn; // 0 is a trunk prefix in most plans; 8 is Russia's, and may start a city code
    } else {
      d = nsn;
    }
    if (old.length === d.length) return oldText.replace(/\d/g, function () { return d.charAt(i++); });
    return '+' + n;
  }
  ns.format = safe(format);

  // Replace every whole match of `re` in `text` (not glued to other digits);
  // `marked`: only the first run that looks like a phone number (RUN).
  function swapIn(text, re, marked) {
    var out = '', last = 0, m, a, b, n;
    if (!re) return text;
    re.lastIndex = 0;
    while ((m = re.exec(text))) {
      a = m.index; b = a + m[0].length; n = digitsOf(m[0]).length;
      if (isDigit(text.charAt(a - 1)) || isDigit(text.charAt(b)) || (marked && (n < 9 || n > 16))) {
        re.lastIndex = marked ? b : a + 1; // a marked run is skipped whole
        continue;
      }
      out += text.slice(last, a) + format(m[0], number);
      last = b;
      if (marked) break;
    }
    return last ? out + text.slice(last) : text;
  }

  // One regexp for every accepted way of writing every target number: full
  // (with or without +), trunk prefix + national number, national number.
  function buildOffice() {
    var forms = [], d, cc, nsn;
    for (d in targets) {
      cc = ccLength(d); nsn = d.slice(cc);
      forms.push('\\+?' + d.split('').join(SEP));
      if (nsn.length >= 6) forms.push('[08]' + SEP + nsn.split('').join(SEP), nsn.split('').join(SEP));
    }
    forms.sort(function (x, y) { return y.length - x.length; }); // longest form wins
    office = forms.length ? new RegExp(forms.join('|'), 'g') : null;
  }

  // The element a node is in, or its nearest ancestor matching `sel`.
  function closest(node, sel) {
    return (node.nodeType === 1 ? node : node.parentNode).closest(sel);
  }

  // Text nodes under `root` that we may touch: whole subtrees that opt out
  // (or are scripts, styles, form fields) are skipped in one step.
  function texts(root) {
    var list = [], walker, n;
    if (root.nodeType === 3) return [root];
    walker = document.createTreeWalker(root, 5 /* SHOW_ELEMENT | SHOW_TEXT */, {
      acceptNode: function (node) {
        return node.nodeType === 3 ? 1 : node.matches(OFF) ? 2 /* REJECT */ : 3 /* SKIP */;
      }
    }, false);
    while ((n = walker.nextNode())) list.push(n);
    return list;
  }

  // A marked element: its number may be split over several text nodes
  // (<b>+7</b> 495...), so it is swapped as one string and poured back.
  function swapMarked(el) {
    var nodes = texts(el), all = '', i, swapped, at = 0, len;
    for (i = 0; i < nodes.length; i++) all += nodes[i].nodeValue;
    // The first phone number, then office numbers in the rest (the first is
    // now ours, not a target, so a second pass changes nothing).
    swapped = swapIn(swapIn(all, RUN, 1), office);
    if (swapped === all) return;
    for (i = 0; i < nodes.length; i++) {
      len = nodes[i].nodeValue.length;
      // Same length: each node keeps its share. Otherwise the first node
      // takes the whole text, so the number still reads right.
      write(nodes[i], swapped.length === all.length ? swapped.substr(at, len) : i ? '' : swapped);
      at += len;
    }
  }

  // A text node's text, or a link's href.
  function read(node) { return node.nodeType === 1 ? node.getAttribute('href') : node.nodeValue; }
  function put(node, value) {
    if (node.nodeType === 1) node.setAttribute('href', value); else node.nodeValue = value;
  }

  function write(node, value) {
    var now = read(node), was = saved.get(node), n;
    if (now === value) return; // no change, no mutation
    // First swap of this node, or the site wrote over ours: what it shows now
    // is what to put back.
    if (!was || was.s !== now) saved.set(node, was = { o: now });
    was.s = value;
    put(node, value);
    if (saved.size > keep) { // forget nodes gone from the page, now and then
      n = document.documentElement;
      saved.forEach(function (v, node) { if (!n.contains(node)) saved.delete(node); });
      keep = saved.size * 2 + 500;
    }
  }

  // The number is lost: every swapped node shows what it showed before
  // (unless the site has written over it since), and the page is no longer
  // followed until a new number comes.
  function restore() {
    if (observer) { observer.disconnect(); observer = null; }
    saved.forEach(function (was, node) { if (read(node) === was.s) put(node, was.o); });
    saved.clear();
    if (number) targets[digitsOf(number)] = 1; // in case it was copied elsewhere
    number = ns.number = code = ns.code = null;
  }

  // The code is gone but the number stays: only the promo elements show what
  // they showed before (unless the site has written over them since).
  function restoreCodes() {
    saved.forEach(function (was, node) {
      if (node.nodeType !== 3 || !node.parentNode || !closest(node, PROMO)) return;
      if (read(node) === was.s) put(node, was.o);
      saved.delete(node);
    });
  }

  function swapLink(a, marked) {
    var href = a.getAttribute('href') || '', rest, swapped;
    if (!/^tel:/i.test(href)) return;
    rest = href.slice(4);
    try { rest = decodeURIComponent(rest); } catch (e) { /* keep it as written */ }
    swapped = swapIn(rest, marked ? RUN : office, marked);
    if (swapped !== rest) write(a, href.slice(0, 4) + swapped);
  }

  // A promo element shows the code as its whole text (one text node made
  // if it has none, so that restore() can empty it again).
  function showCode(el) {
    var nodes = texts(el), i;
    if (!nodes.length) nodes = [el.appendChild(document.createTextNode(''))];
    for (i = 0; i < nodes.length; i++) write(nodes[i], i ? '' : code);
  }

  function swapTree(root) {
    var isText = root.nodeType === 3, nodes, i, el, marked;
    // Comments and the like carry no visible number (and no querySelectorAll).
    if ((!isText && root.nodeType !== 1) || !root.parentNode || closest(root, OFF)) return;
    if (code) {
      el = closest(root, PROMO);
      nodes = el ? [el] : isText ? [] : [].slice.call(root.querySelectorAll(PROMO));
      for (i = 0; i < nodes.length; i++) if (!closest(nodes[i], OFF)) showCode(nodes[i]);
      if (el) return;
    }
    if (!number) return; // a promo code only (no pool fits this page)
    marked = closest(root, MARKED);
    if (marked) { swapMarked(marked); if (isText) return; }
    nodes = texts(root);
    for (i = 0; i < nodes.length; i++) {
      if (!closest(nodes[i], MARKED)) write(nodes[i], swapIn(nodes[i].nodeValue, office));
    }
    if (isText) return;
    nodes = [root].concat([].slice.call(root.querySelectorAll('a,' + MARKED)));
    for (i = 0; i < nodes.length; i++) {
      el = nodes[i];
      if (closest(el, OFF)) continue;
      if (el.matches(MARKED)) swapMarked(el);
      if (el.nodeName === 'A') swapLink(el, !!closest(el, MARKED));
    }
  }

  // Our own writes make mutation records too: they are dropped right after
  // each pass (takeRecords), and a pass over already swapped text changes
  // nothing anyway, so the observer cannot loop on itself.
  function swapAll(root) {
    if (root) swapTree(root);
    if (observer) observer.takeRecords();
  }

  // One node's trouble must not cost the others their swap.
  var swapOne = safe(swapTree);

  var onMutations = safe(function (records) {
    for (var i = 0, r, j; i < records.length; i++) {
      r = records[i];
      if (r.type === 'childList') {
        for (j = 0; j < r.addedNodes.length; j++) swapOne(r.addedNodes[j]);
      } else {
        swapOne(r.target); // characterData on a text node, or a changed href
      }
    }
    if (observer) observer.takeRecords();
  });

  // A phone number in an answer: a string of 6-16 digits, once stripped.
  function phone(s) {
    var n = typeof s === 'string' ? digitsOf(s).length : 0;
    return n >= 6 && n <= 16;
  }

  // The daemon's answer is checked before anything on the page changes, and
  // ignored as a whole when it fails: `replace: {"length": 3e8}` once froze
  // the page. A number, a promo code or both; neither is nothing to show.
  // Returns whether it was applied.
  function apply(r) {
    var list = r.replace == null ? [] : r.replace, h = r.heartbeat_seconds, c = r.code, n = r.number, i;
    if ((n != null && !phone(n)) || (c != null && !/^\d{1,12}$/.test(typeof c === 'string' ? c : '')) ||
        (n == null && c == null) || !/^[\w.~-]{1,64}$/.test(typeof r.session_id === 'string' ? r.session_id : '') ||
        !Array.isArray(list) || list.length > 20) return 0;
    for (i = 0; i < list.length; i++) if (!phone(list[i])) return 0;
    n = n == null ? '' : digitsOf(n);
    if (number && !n) restore(); // no number any more: the page's own come back
    if (number && digitsOf(number) !== n) targets[digitsOf(number)] = 1; // a new session's number replaces ours
    for (i = 0; i < list.length; i++) targets[digitsOf(list[i])] = 1;
    delete targets[n];
    session = r.session_id;
    number = ns.number = n ? '+' + n : null;
    // The answer's code or none: a code the daemon no longer gives us may be
    // someone else's by now, so the promo elements get their own text back.
    c = c == null ? null : c;
    if (code && !c) restoreCodes();
    code = ns.code = c;
    if (typeof r.visit_number === 'number' && r.visit_number > 0) save(VISITS, String(r.visit_number | 0));
    period = (typeof h === 'number' && h === h ? Math.min(Math.max(h, 5), 3600) : 30) * 1000;
    retry = 0;
    buildOffice();
    swapAll(document.documentElement);
    if (!observer && window.MutationObserver) {
      observer = new MutationObserver(onMutations);
      observer.observe(document.documentElement, {
        childList: true, subtree: true, characterData: true, attributeFilter: ['href']
      });
    }
    schedule();
    return 1;
  }

  // POST JSON; done(status, object or null) is called exactly once. Status 0
  // means no answer: refused, timed out, or blocked (CORS).
  function post(path, body, done) {
    var x = new XMLHttpRequest(), finished = 0;
    var end = safe(function (status, json) { if (!finished++) done(status, json); });
    try {
      x.open('POST', endpoint + path);
      x.timeout = TIMEOUT_MS;
      x.setRequestHeader('Content-Type', 'application/json');
      x.onload = function () {
        var json = null;
        try { json = JSON.parse(x.responseText); } catch (e) { /* bad JSON: no object */ }
        end(x.status, json && typeof json === 'object' ? json : null);
      };
      x.onerror = x.ontimeout = function () { end(0, null); };
      x.send(JSON.stringify(body));
    } catch (e) {
      end(0, null);
    }
  }

  // `renewing`: the session whose heartbeat the daemon refused, so that it
  // can give the visitor the same number again if it is still free.
  function start(renewing) {
    if (starting) return;
    starting = 1;
    post('/v1/sessions', {
      visitor_id: visitor(),
      page: location.href, // the daemon reads UTM tags and click ids from it
      referrer: document.referrer,
      title: document.title,
      ga: cookie('_ga'),
      ym_uid: ymUid(),
      visits_before: +load(VISITS) || 0,
      pool: pool || undefined, // undefined: left out of the JSON
      session_id: renewing
    }, function (status, r) {
      starting = 0;
      if (status === 200 && r && apply(r)) return;
      // Anything else: on the first page view, the page keeps its own
      // numbers. On a renewal, ours is no longer held: the office numbers go
      // back, and we ask again in 30 s, then twice as long each time, up to 5 min.
      if (renewing) {
        restore();
        retry = retry ? Math.min(retry * 2, RETRY_MAX) : RETRY_MIN;
        due = +new Date() + retry;
        schedule();
      }
    });
  }

  function visible() { return document.visibilityState !== 'hidden'; }

  // The next beat (or, after a failed renewal, the next try) is planned when
  // this one leaves, not when it returns, so a slow daemon does not stretch
  // the cadence. Hidden tabs plan nothing.
  function schedule() {
    clearTimeout(timer);
    timer = visible() ? setTimeout(safe(retry ? renew : beat), retry ? due - new Date() : period) : 0;
  }

  function renew() { start(session); }

  function beat() {
    schedule();
    post('/v1/sessions/' + encodeURIComponent(session) + '/heartbeat', {}, function (status) {
      if (status === 404) { clearTimeout(timer); start(session); } // the daemon let it go: ask again
    });
  }

  // Hidden tabs send nothing; a tab that comes back says so at once (or,
  // with no session held, asks again when the try is due, at once if past).
  document.addEventListener('visibilitychange', safe(function () {
    if (!session) return;
    if (!visible()) clearTimeout(timer); else if (retry) schedule(); else beat();
  }));

  function storage(key, value) {
    try {
      if (value === undefined) return window.localStorage.getItem(key);
      window.localStorage.setItem(key, value);
      return 1;
    } catch (e) {
      return null; // storage blocked (privacy settings, sandboxed frame)
    }
  }

  function cookie(name) {
    try {
      var m = document.cookie.match(new RegExp('(?:^|; )' + name + '=([^;]*)'));
      return m ? decodeURIComponent(m[1]) : null;
    } catch (e) {
      return null;
    }
  }

  function ymUid() {
    // Yandex Metrica keeps it in a cookie, and in localStorage as a JSON string.
    var v = cookie('_ym_uid') || storage('_ym_uid');
    return v ? String(v).replace(/"/g, '') || null : null;
  }

  function randomId() {
    try {
      return crypto.randomUUID();
    } catch (e) {
      // Plain-http pages have no randomUUID; the id must be unique, not secret.
      return (Math.random().toString(36) + Math.random().toString(36)).replace(/0\./g, '') +
        (+new Date()).toString(36);
    }
  }

  // What the snippet keeps about the visitor lives in localStorage, or in a
  // first-party cookie when storage is blocked.
  function load(key) { return storage(key) || cookie(key); }
  function save(key, value) {
    if (!storage(key, value)) {
      document.cookie = key + '=' + value + '; max-age=63072000; path=/; SameSite=Lax' +
        (location.protocol === 'https:' ? '; Secure' : '');
    }
  }

  function visitor() {
    var id = load(KEY);
    if (!/^[\w-]{8,64}$/.test(id || '')) id = randomId();
    save(KEY, id);
    return id;
  }

  safe(function () {
    var me = document.currentScript; // set for async scripts too, while they first run
    // Too old a browser: leave it be.
    if (!me || !window.Map || !window.Element || !Element.prototype.closest) return;
    saved = new Map();
    endpoint = me.getAttribute('data-ctrack-endpoint') || (/^https?:\/\/[^\/]+/.exec(me.src) || [''])[0];
    endpoint = endpoint.replace(/\/+$/, '');
    pool = me.getAttribute('data-ctrack-pool');
    if (!endpoint) return;
    // A page still loading is followed by the observer; one more pass when it
    // is parsed catches text the parser appended to nodes already swapped.
    if (document.readyState === 'loading') {
      document.addEventListener('DOMContentLoaded', safe(function () {
        if (number || code) swapAll(document.documentElement);
      }));
    }
    start();
  })();
})(window, document);
