/*! Rivulet browser RUM: page views, Web Vitals, JS errors and resource timings, sent with
 * navigator.sendBeacon when the page is hidden. No dependencies, no cookies.
 *
 *   <script async src="https://gateway.example.com/rum.js" data-key="rb_..."></script>
 *
 * data-key       a browser key (`rivulet keys create --type browser --origin https://...`)
 * data-endpoint  the gateway's base URL (default: where this script was loaded from)
 * Also: window.rivuletRum.action(name, attrs) records an "action"; .flush() sends now.
 * Served by the Rivulet gateway at GET /rum.js (services/gateway/static/rum.js).
 */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script || window.rivuletRum) return;
  var key = script.getAttribute("data-key");
  if (!key) return;
  var base = script.getAttribute("data-endpoint") || new URL(script.src, location.href).origin;
  var url = base.replace(/\/+$/, "") + "/v1/ingest/rum?key=" + encodeURIComponent(key);

  var MAX_CHARS = 16000; // per beacon: <= 48 KiB of UTF-8, under sendBeacon's 64 KiB quota
  var FLUSH_AT = 40; // queued events that trigger a send while the page is visible
  var MAX_ERRORS = 25;
  var MAX_RESOURCES = 150;
  var THRESHOLDS = {
    lcp: [2500, 4000], cls: [0.1, 0.25], inp: [200, 500], fcp: [1800, 3000], ttfb: [800, 1800]
  };

  var queue = [];
  var errors = 0;
  var resources = 0;
  var reported = {};

  function uuid() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    var b = new Uint8Array(16);
    crypto.getRandomValues(b);
    b[6] = (b[6] & 15) | 64;
    b[8] = (b[8] & 63) | 128;
    var h = "";
    for (var i = 0; i < 16; i++) h += (b[i] + 256).toString(16).slice(1);
    return h.slice(0, 8) + "-" + h.slice(8, 12) + "-" + h.slice(12, 16) + "-" +
      h.slice(16, 20) + "-" + h.slice(20);
  }

  // session id: sessionStorage only (one tab, gone when it closes); never a cookie
  var sessionId = (function () {
    try {
      var id = sessionStorage.getItem("rivulet.session");
      if (!id) {
        id = uuid();
        sessionStorage.setItem("rivulet.session", id);
      }
      return id;
    } catch (e) {
      return uuid(); // storage blocked: a session per page
    }
  })();

  function iso(perfTime) {
    var origin = performance.timeOrigin || Date.now() - performance.now();
    return new Date(perfTime === undefined ? Date.now() : origin + perfTime).toISOString();
  }

  function finite(obj) {
    var out = {};
    for (var k in obj) {
      if (typeof obj[k] === "number" && isFinite(obj[k])) out[k] = Math.round(obj[k] * 1000) / 1000;
    }
    return out;
  }

  function text(value, limit) {
    return value === undefined || value === null ? "" : String(value).slice(0, limit);
  }

  function record(type, fields) {
    var event = {
      id: uuid(),
      ts: fields.ts || iso(),
      session_id: sessionId,
      type: type,
      url: location.href
    };
    if (fields.referrer) event.referrer = fields.referrer;
    if (fields.metrics) event.metrics = finite(fields.metrics);
    if (fields.error) event.error = fields.error;
    if (fields.attrs) event.attrs = fields.attrs;
    queue.push(JSON.stringify(event));
    if (queue.length >= FLUSH_AT && document.visibilityState === "visible") flush();
  }

  function send(body) {
    try {
      if (navigator.sendBeacon && navigator.sendBeacon(url, body)) return;
    } catch (e) { /* fall back to fetch */ }
    try {
      fetch(url, {
        method: "POST", body: body, keepalive: true, credentials: "omit", mode: "cors",
        headers: { "Content-Type": "text/plain" }
      });
    } catch (e) { /* nothing more to try */ }
  }

  function flush() {
    while (queue.length) {
      var lines = [];
      var size = 0;
      while (queue.length && (!lines.length || size + queue[0].length + 1 <= MAX_CHARS)) {
        var line = queue.shift();
        lines.push(line);
        size += line.length + 1;
      }
      send(lines.join("\n"));
    }
  }

  function vital(name, value) {
    if (reported[name] || typeof value !== "number" || !isFinite(value)) return;
    reported[name] = true;
    var t = THRESHOLDS[name];
    var rating = value <= t[0] ? "good" : value <= t[1] ? "needs-improvement" : "poor";
    var metrics = {};
    metrics[name] = value;
    record("web_vital", { metrics: metrics, attrs: { name: name.toUpperCase(), rating: rating } });
  }

  function observe(type, callback, options) {
    try {
      var po = new PerformanceObserver(function (list) { list.getEntries().forEach(callback); });
      var opts = options || {};
      opts.type = type;
      opts.buffered = true;
      po.observe(opts);
      return po;
    } catch (e) {
      return null; // entry type not supported by this browser
    }
  }

  var navigation = (performance.getEntriesByType && performance.getEntriesByType("navigation")[0]) || null;
  var activation = (navigation && navigation.activationStart) || 0;

  // --- page view ---------------------------------------------------------------------------
  record("page_view", {
    referrer: document.referrer,
    attrs: {
      title: text(document.title, 512),
      navigation_type: navigation ? navigation.type : "",
      viewport: window.innerWidth + "x" + window.innerHeight,
      language: navigator.language || ""
    }
  });

  // --- Web Vitals ----------------------------------------------------------------------------
  if (navigation && navigation.responseStart > 0) {
    vital("ttfb", Math.max(0, navigation.responseStart - activation));
  } else {
    addEventListener("load", function () {
      var nav = performance.getEntriesByType("navigation")[0];
      if (nav) vital("ttfb", Math.max(0, nav.responseStart - activation));
    });
  }
  observe("paint", function (entry) {
    if (entry.name === "first-contentful-paint") vital("fcp", Math.max(0, entry.startTime - activation));
  });

  var lcp = null;
  observe("largest-contentful-paint", function (entry) {
    lcp = Math.max(0, entry.startTime - activation);
  });

  var cls = 0;
  var session = 0;
  var sessionEntries = [];
  observe("layout-shift", function (entry) {
    if (entry.hadRecentInput) return;
    var first = sessionEntries[0];
    var last = sessionEntries[sessionEntries.length - 1];
    if (last && entry.startTime - last.startTime < 1000 && entry.startTime - first.startTime < 5000) {
      session += entry.value;
      sessionEntries.push(entry);
    } else {
      session = entry.value;
      sessionEntries = [entry];
    }
    cls = Math.max(cls, session);
  });

  // INP: the worst interaction, or about the 98th percentile once there are 50 or more
  var interactions = {};
  var interactionCount = 0;
  var longest = [];
  function onInteraction(entry) {
    if (!entry.interactionId) return;
    var seen = interactions[entry.interactionId];
    if (seen === undefined) interactionCount++;
    if (seen !== undefined && seen >= entry.duration) return;
    interactions[entry.interactionId] = entry.duration;
    longest = longest.filter(function (x) { return x.id !== entry.interactionId; });
    longest.push({ id: entry.interactionId, duration: entry.duration });
    longest.sort(function (a, b) { return b.duration - a.duration; });
    longest = longest.slice(0, 10);
  }
  observe("event", onInteraction, { durationThreshold: 16 });
  observe("first-input", onInteraction);

  function finalVitals() {
    if (lcp !== null) vital("lcp", lcp);
    vital("cls", cls);
    if (longest.length) {
      vital("inp", longest[Math.min(longest.length - 1, Math.floor(interactionCount / 50))].duration);
    }
  }

  // --- errors --------------------------------------------------------------------------------
  addEventListener("error", function (e) {
    if (errors >= MAX_ERRORS) return;
    var target = e.target;
    if (target && target !== window && target.tagName) {
      errors++;
      record("error", {
        error: {
          kind: "resource",
          message: "failed to load " + target.tagName.toLowerCase(),
          source: text(target.src || target.href, 2048)
        }
      });
      return;
    }
    errors++;
    record("error", {
      error: {
        kind: "js",
        message: text(e.message, 1024),
        source: text(e.filename, 2048),
        line: e.lineno || 0,
        column: e.colno || 0,
        stack: text(e.error && e.error.stack, 4096)
      }
    });
  }, true);
  addEventListener("unhandledrejection", function (e) {
    if (errors >= MAX_ERRORS) return;
    errors++;
    var reason = e.reason;
    record("error", {
      error: {
        kind: "unhandledrejection",
        message: text(reason && reason.message !== undefined ? reason.message : reason, 1024),
        stack: text(reason && reason.stack, 4096)
      }
    });
  });

  // --- resource timings ----------------------------------------------------------------------
  observe("resource", function (entry) {
    if (resources >= MAX_RESOURCES || entry.name.indexOf(url.split("?")[0]) === 0) return;
    resources++;
    record("resource", {
      ts: iso(entry.startTime),
      metrics: {
        duration: entry.duration,
        start_time: entry.startTime,
        ttfb: entry.responseStart > 0 ? entry.responseStart - entry.startTime : undefined,
        transfer_size: entry.transferSize,
        encoded_body_size: entry.encodedBodySize,
        decoded_body_size: entry.decodedBodySize
      },
      attrs: {
        resource_url: text(entry.name, 2048),
        initiator_type: entry.initiatorType || "",
        protocol: entry.nextHopProtocol || ""
      }
    });
  });

  // --- flush when the page goes away ---------------------------------------------------------
  function hidden() {
    finalVitals();
    flush();
  }
  addEventListener("visibilitychange", function () {
    if (document.visibilityState === "hidden") hidden();
  }, true);
  addEventListener("pagehide", hidden, true);

  window.rivuletRum = {
    action: function (name, attrs) {
      var a = {};
      for (var k in attrs || {}) a[k] = attrs[k];
      a.name = text(name, 256);
      record("action", { attrs: a });
    },
    flush: flush
  };
})();
