/* ribsr serve's page: options from /api/info, uploads to /api/jobs (one job per image, queued by the server),
 * progress by polling /api/jobs/ID, and the finished job in the before/after viewer (compare.js) with its
 * download. Each job's list item carries data-id and data-state (uploading, queued, running, done, error). */
(function () {
  "use strict";

  var $ = function (id) { return document.getElementById(id); };
  var info = null;
  var jobs = [];        // {id, file, name, li, status, options}
  var selected = null;  // the job in the viewer

  function setMessage(text) {
    var m = $("message");
    m.textContent = text || "";
    m.hidden = !text;
  }

  function option(select, value, text) {
    var o = document.createElement("option");
    o.value = value; o.textContent = text;
    select.appendChild(o);
  }

  function model(id) {
    for (var i = 0; i < info.models.length; i++) if (info.models[i].id === id) return info.models[i];
    return null;
  }

  function fillScales() {
    var m = model($("model").value);
    var scale = $("scale");
    var before = scale.value;
    scale.textContent = "";
    if (m) m.scales.forEach(function (s) { option(scale, String(s), "x" + s); });
    else option(scale, "", "the checkpoint's");
    if (Array.prototype.some.call(scale.options, function (o) { return o.value === before; })) scale.value = before;
  }

  function updateForm() {
    var m = model($("model").value);
    var c = model($("compare").value);
    fillScales();
    document.querySelectorAll(".checkpoint").forEach(function (n) { n.hidden = !!m; });
    document.querySelectorAll(".denoise").forEach(function (n) { n.hidden = !(m && m.denoise); });
    document.querySelectorAll(".compare-checkpoint").forEach(function (n) { n.hidden = !!c; });
    document.querySelectorAll(".compare-denoise").forEach(function (n) { n.hidden = !(c && c.denoise); });
    $("tile").parentNode.hidden = $("tile-mode").value !== "n";
    $("denoise-value").textContent = $("denoise").value;
    $("compare-denoise-value").textContent = $("compare-denoise").value;
  }

  function currentOptions() {
    var m = model($("model").value), c = model($("compare").value);
    var o = { model: m ? m.id : $("checkpoint").value.trim(), compare: c ? c.id : $("compare-checkpoint").value.trim() };
    if ($("scale").value) o.scale = $("scale").value;
    if (!m && $("config").value.trim()) o.config = $("config").value.trim();
    if (m && m.denoise) o.denoise = $("denoise").value;
    if (c && c.denoise) o.compare_denoise = $("compare-denoise").value;
    var mode = $("tile-mode").value;
    o.tile = mode === "n" ? $("tile").value : mode;
    if ($("overlap").value !== "") o.overlap = $("overlap").value;
    return o;
  }

  function query(params) {
    return Object.keys(params).map(function (k) {
      return encodeURIComponent(k) + "=" + encodeURIComponent(params[k]);
    }).join("&");
  }

  function stateText(s) {
    if (s.state === "queued") return "queued" + (s.position ? ", " + s.position + " ahead" : ", next");
    if (s.state === "running") return s.stage || "running";
    if (s.state === "error") return "error: " + s.error;
    if (s.state === "done") {
      var secs = (s.seconds.result || 0) + (s.seconds.before || 0);
      return "done: " + s.output_size[0] + "\u00d7" + s.output_size[1] + " in " + secs.toFixed(1) + " s";
    }
    return s.state;
  }

  function render(job) {
    var s = job.status;
    job.li.dataset.state = s.state;
    job.li.classList.toggle("error", s.state === "error");
    job.bar.value = s.state === "done" ? 1 : s.progress || 0;
    job.text.textContent = stateText(s);
    job.text.title = job.text.textContent;
  }

  function addJob(file, options) {
    var li = document.createElement("li");
    var name = document.createElement("span"); name.className = "name"; name.textContent = file.name;
    var bar = document.createElement("progress"); bar.max = 1; bar.value = 0;
    var text = document.createElement("span"); text.className = "state";
    li.appendChild(name); li.appendChild(bar); li.appendChild(text);
    $("jobs").insertBefore(li, $("jobs").firstChild);
    var job = { id: null, file: file, name: file.name, li: li, bar: bar, text: text, options: options,
      status: { state: "uploading", progress: 0 } };
    li.addEventListener("click", function () { if (job.status.state === "done") show(job); });
    jobs.push(job);
    render(job);
    text.textContent = "uploading";
    return job;
  }

  function fail(job, message) {
    job.status = { state: "error", error: message, progress: 0 };
    render(job);
    setMessage(message);
  }

  function submit(file, options) {
    options = options || currentOptions();
    var job = addJob(file, options);
    var params = Object.assign({ name: file.name }, options);
    var xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/jobs?" + query(params));
    xhr.upload.onprogress = function (ev) {
      if (ev.lengthComputable) { job.bar.value = 0; job.text.textContent = "uploading " +
        Math.round(100 * ev.loaded / ev.total) + "%"; }
    };
    xhr.onload = function () {
      var data = null;
      try { data = JSON.parse(xhr.responseText); } catch (e) { data = null; }
      if (xhr.status !== 202 || !data || !data.id) {
        fail(job, (data && data.error) || ("upload failed: HTTP " + xhr.status));
        return;
      }
      setMessage("");
      job.id = data.id;
      job.li.dataset.id = data.id;
      job.status = data;
      render(job);
      poll(job);
    };
    xhr.onerror = function () { fail(job, file.name + ": the upload failed (is ribsr serve still running?)"); };
    xhr.send(file);
  }

  function poll(job) {
    fetch("/api/jobs/" + job.id, { cache: "no-store" }).then(function (r) {
      return r.json().then(function (data) { return { ok: r.ok, data: data }; });
    }).then(function (r) {
      if (!r.ok) { fail(job, r.data.error || "job lost"); return; }
      job.status = r.data;
      render(job);
      if (r.data.state === "done") {
        if (!selected || selected.status.state !== "done" || isNewest(job)) show(job);
      } else if (r.data.state === "error") {
        setMessage(r.data.error);
      } else {
        setTimeout(function () { poll(job); }, 250);
      }
    }).catch(function () {
      setTimeout(function () { poll(job); }, 1000);
    });
  }

  function isNewest(job) {
    for (var i = jobs.length - 1; i >= 0; i--) if (jobs[i].status.state === "done") return jobs[i] === job;
    return true;
  }

  function show(job) {
    var s = job.status;
    selected = job;
    jobs.forEach(function (j) { j.li.classList.toggle("selected", j === job); });
    $("result").hidden = false;
    $("result").dataset.job = s.id;
    $("result-name").textContent = s.name;
    $("result-facts").textContent = s.size[0] + "\u00d7" + s.size[1] + " \u2192 " + s.output_size[0] + "\u00d7" +
      s.output_size[1] + " (x" + s.scale + ") \u00b7 left: " + s.labels.before + " \u00b7 right: " + s.labels.after +
      (s.notes.length ? " \u00b7 " + s.notes.join("; ") : "");
    var a = $("download");
    a.href = s.result;
    a.setAttribute("download", s.download_name);
    a.textContent = "Download " + s.download_name;
    RibsrCompare.mount($("viewer"), { before: s.before, after: s.result, beforeLabel: s.labels.before,
      afterLabel: s.labels.after });
  }

  function take(files) {
    Array.prototype.forEach.call(files, function (f) { submit(f); });
  }

  function start(data) {
    info = data;
    var m = $("model"), c = $("compare");
    info.models.forEach(function (x) {
      if (!x.compare_only) option(m, x.id, x.label);
      option(c, x.id, x.label);
    });
    if (info.checkpoints) { option(m, "", "checkpoint\u2026"); option(c, "", "checkpoint\u2026"); }
    var real = model("real");
    ["model", "compare", "scale", "tile-mode", "denoise", "compare-denoise"].forEach(function (id) {
      $(id).addEventListener("input", updateForm);
      $(id).addEventListener("change", updateForm);
    });
    updateForm();
    var lim = info.max_output_pixels;
    $("limit").textContent = (lim ? "Images whose output would pass " + lim.toLocaleString("en") +
      " pixels (" + (lim / 1e6).toFixed(0) + " megapixels) are refused (ribsr serve " + info.limit_name + "). " : "") +
      "Running on " + info.device + "; images queue and run one at a time." +
      (real ? "" : " The real-world model is not installed.");
    document.body.dataset.ready = "1";
  }

  var drop = $("drop");
  ["dragenter", "dragover"].forEach(function (t) {
    drop.addEventListener(t, function (ev) { ev.preventDefault(); drop.classList.add("over"); });
  });
  ["dragleave", "drop"].forEach(function (t) {
    drop.addEventListener(t, function () { drop.classList.remove("over"); });
  });
  drop.addEventListener("drop", function (ev) {
    ev.preventDefault();
    if (ev.dataTransfer && ev.dataTransfer.files.length) take(ev.dataTransfer.files);
  });
  $("file").addEventListener("change", function () { take(this.files); this.value = ""; });
  $("rerun").addEventListener("click", function () { if (selected) submit(selected.file); });

  fetch("/api/info").then(function (r) { return r.json(); }).then(start).catch(function (e) {
    setMessage("cannot reach ribsr serve: " + e);
  });
  window.ribsrApp = { jobs: jobs, submit: submit, options: currentOptions };
})();
