/* The before/after viewer of ribsr serve's page and ribsr compare's reports (one file; reports inline it).
 *
 * RibsrCompare.mount(element, {before, after, beforeLabel, afterLabel}) fills element with two stacked images of
 * the same size: the "before" one shows left of a draggable divider, the "after" one right of it (the divider's
 * position, data-split, is a fraction of the picture's visible width: all of the view once the picture fills it).
 * The wheel zooms about the pointer (down to single image pixels, drawn unsmoothed), dragging the picture pans, a
 * double click toggles fit / one image pixel per screen pixel; keys: arrows move the divider, + and - zoom, 0 fits,
 * 1 is 1:1.
 * The element's data-split (0..1) and data-zoom (screen pixels per image pixel) follow the view.
 * RibsrCompare.mountAll(root) mounts every element with data-rc-before and data-rc-after attributes.
 */
(function (global) {
  "use strict";

  var MAX_ZOOM = 64;

  function el(tag, cls, parent) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (parent) parent.appendChild(node);
    return node;
  }

  function mount(root, opts) {
    root.classList.add("rc");
    root.textContent = "";
    var view = el("div", "rc-view", root);
    view.tabIndex = 0;
    view.setAttribute("role", "img");
    view.setAttribute("aria-label", (opts.beforeLabel || "before") + " and " + (opts.afterLabel || "after") +
      ", compared with a slider");
    var afterLayer = el("div", "rc-layer rc-after", view);
    var beforeLayer = el("div", "rc-layer rc-before", view);
    var afterImg = el("img", "", afterLayer);
    var beforeImg = el("img", "", beforeLayer);
    afterImg.alt = opts.afterLabel || "after";
    beforeImg.alt = opts.beforeLabel || "before";
    afterImg.draggable = beforeImg.draggable = false;
    var divider = el("div", "rc-divider", view);
    el("div", "rc-handle", divider);
    el("span", "rc-label rc-label-before", view).textContent = opts.beforeLabel || "before";
    el("span", "rc-label rc-label-after", view).textContent = opts.afterLabel || "after";

    var controls = el("div", "rc-controls", root);
    var range = el("input", "rc-split", controls);
    range.type = "range"; range.min = "0"; range.max = "1000"; range.value = "500";
    range.setAttribute("aria-label", "divider position");
    var buttons = {};
    [["fit", "fit"], ["one", "1:1"], ["out", "\u2212"], ["in", "+"]].forEach(function (b) {
      var button = el("button", "rc-" + b[0], controls);
      button.type = "button"; button.textContent = b[1];
      buttons[b[0]] = button;
    });
    buttons.one.title = "one image pixel per screen pixel";
    var zoomText = el("span", "rc-zoom", controls);
    var pixelText = el("span", "rc-pixel", controls);

    var state = { split: 0.5, zoom: 1, tx: 0, ty: 0, w: 0, h: 0, fitted: true };

    function viewSize() { return { w: view.clientWidth, h: view.clientHeight }; }

    function fitZoom() {
      var v = viewSize();
      if (!state.w || !state.h || !v.w || !v.h) return 1;
      return Math.min(v.w / state.w, v.h / state.h);
    }

    // The divider's range: the picture's visible extent (all of the view once the picture fills it).
    function span() {
      var v = viewSize();
      if (!state.w) return [0, v.w];
      var left = Math.max(0, state.tx), right = Math.min(v.w, state.tx + state.w * state.zoom);
      return right > left ? [left, right] : [0, v.w];
    }

    function render() {
      var t = "translate(" + state.tx + "px," + state.ty + "px) scale(" + state.zoom + ")";
      afterImg.style.transform = beforeImg.style.transform = t;
      var s = span(), px = s[0] + state.split * (s[1] - s[0]);
      beforeLayer.style.clipPath = "inset(0 " + Math.max(0, viewSize().w - px) + "px 0 0)";
      divider.style.left = px + "px";
      range.value = String(Math.round(state.split * 1000));
      root.classList.toggle("rc-smooth", state.zoom < 1);
      zoomText.textContent = Math.round(state.zoom * 100) + "%";
      root.dataset.split = state.split.toFixed(4);
      root.dataset.zoom = state.zoom.toFixed(4);
    }

    function clampPan() {
      var v = viewSize();
      var sw = state.w * state.zoom, sh = state.h * state.zoom;
      // Keep the picture centred when it is smaller than the view, and inside it when larger.
      state.tx = sw <= v.w ? (v.w - sw) / 2 : Math.min(0, Math.max(v.w - sw, state.tx));
      state.ty = sh <= v.h ? (v.h - sh) / 2 : Math.min(0, Math.max(v.h - sh, state.ty));
    }

    function zoomAt(z, cx, cy) {
      var low = Math.min(fitZoom(), 1);
      z = Math.max(low, Math.min(MAX_ZOOM, z));
      state.tx = cx - (cx - state.tx) * z / state.zoom;
      state.ty = cy - (cy - state.ty) * z / state.zoom;
      state.zoom = z;
      state.fitted = false;
      clampPan();
      render();
    }

    function fit() {
      state.zoom = fitZoom();
      state.fitted = true;
      clampPan();
      render();
    }

    function center() { var v = viewSize(); return [v.w / 2, v.h / 2]; }

    function setSplit(f) {
      state.split = Math.max(0, Math.min(1, f));
      render();
    }

    function local(ev) {
      var r = view.getBoundingClientRect();
      return [ev.clientX - r.left, ev.clientY - r.top];
    }

    function showPixel(ev) {
      if (!state.w) return;
      var p = local(ev);
      var x = Math.floor((p[0] - state.tx) / state.zoom), y = Math.floor((p[1] - state.ty) / state.zoom);
      pixelText.textContent = x >= 0 && y >= 0 && x < state.w && y < state.h ? "x " + x + ", y " + y : "";
    }

    var drag = null;
    view.addEventListener("pointerdown", function (ev) {
      if (ev.button !== 0) return;
      view.focus({ preventScroll: true });
      var onDivider = ev.target === divider || divider.contains(ev.target);
      drag = { mode: onDivider ? "split" : "pan", x: ev.clientX, y: ev.clientY, tx: state.tx, ty: state.ty };
      if (!onDivider) view.classList.add("rc-panning");
      view.setPointerCapture(ev.pointerId);
      ev.preventDefault();
    });
    view.addEventListener("pointermove", function (ev) {
      showPixel(ev);
      if (!drag) return;
      if (drag.mode === "split") {
        var s = span();
        setSplit((local(ev)[0] - s[0]) / (s[1] - s[0]));
      } else {
        state.tx = drag.tx + ev.clientX - drag.x;
        state.ty = drag.ty + ev.clientY - drag.y;
        state.fitted = false;
        clampPan();
        render();
      }
    });
    function endDrag(ev) {
      if (!drag) return;
      drag = null;
      view.classList.remove("rc-panning");
      if (view.hasPointerCapture(ev.pointerId)) view.releasePointerCapture(ev.pointerId);
    }
    view.addEventListener("pointerup", endDrag);
    view.addEventListener("pointercancel", endDrag);
    view.addEventListener("wheel", function (ev) {
      ev.preventDefault();
      var p = local(ev);
      var unit = ev.deltaMode === 1 ? 16 : ev.deltaMode === 2 ? 400 : 1;
      zoomAt(state.zoom * Math.exp(-ev.deltaY * unit * 0.0015), p[0], p[1]);
    }, { passive: false });
    view.addEventListener("dblclick", function (ev) {
      var p = local(ev);
      if (Math.abs(state.zoom - 1) < 1e-6 && !state.fitted) fit();
      else zoomAt(1, p[0], p[1]);
    });
    view.addEventListener("keydown", function (ev) {
      var c = center();
      if (ev.key === "ArrowLeft") setSplit(state.split - 0.02);
      else if (ev.key === "ArrowRight") setSplit(state.split + 0.02);
      else if (ev.key === "+" || ev.key === "=") zoomAt(state.zoom * 2, c[0], c[1]);
      else if (ev.key === "-") zoomAt(state.zoom / 2, c[0], c[1]);
      else if (ev.key === "0") fit();
      else if (ev.key === "1") zoomAt(1, c[0], c[1]);
      else return;
      ev.preventDefault();
    });
    range.addEventListener("input", function () { setSplit(Number(range.value) / 1000); });
    buttons.fit.addEventListener("click", fit);
    buttons.one.addEventListener("click", function () { var c = center(); zoomAt(1, c[0], c[1]); });
    buttons["in"].addEventListener("click", function () { var c = center(); zoomAt(state.zoom * 2, c[0], c[1]); });
    buttons.out.addEventListener("click", function () { var c = center(); zoomAt(state.zoom / 2, c[0], c[1]); });

    var loaded = 0;
    function onLoad() {
      loaded += 1;
      if (loaded < 2) return;
      state.w = afterImg.naturalWidth;
      state.h = afterImg.naturalHeight;
      // The two pictures are drawn at the same size, whatever their files hold.
      afterImg.style.width = beforeImg.style.width = state.w + "px";
      afterImg.style.height = beforeImg.style.height = state.h + "px";
      var width = view.clientWidth;
      if (width && state.w) {
        var maxH = Math.round(global.innerHeight * 0.7);
        view.style.height = Math.max(160, Math.min(maxH, Math.round(width * state.h / state.w))) + "px";
      }
      fit();
      root.dataset.ready = "1";
      if (opts.onReady) opts.onReady(controller);
    }
    afterImg.addEventListener("load", onLoad);
    beforeImg.addEventListener("load", onLoad);
    if (global.ResizeObserver) {
      new global.ResizeObserver(function () {
        if (!state.w) return;
        if (state.fitted) fit(); else { clampPan(); render(); }
      }).observe(view);
    }
    afterImg.src = opts.after;
    beforeImg.src = opts.before;
    render();

    var controller = {
      setSplit: setSplit,
      fit: fit,
      zoomTo: function (z) { var c = center(); zoomAt(z, c[0], c[1]); },
      state: function () { return { split: state.split, zoom: state.zoom, tx: state.tx, ty: state.ty }; },
    };
    root.rcController = controller;
    return controller;
  }

  function mountAll(scope) {
    var nodes = (scope || document).querySelectorAll("[data-rc-before][data-rc-after]");
    Array.prototype.forEach.call(nodes, function (node) {
      mount(node, {
        before: node.getAttribute("data-rc-before"), after: node.getAttribute("data-rc-after"),
        beforeLabel: node.getAttribute("data-rc-before-label"), afterLabel: node.getAttribute("data-rc-after-label"),
      });
    });
  }

  global.RibsrCompare = { mount: mount, mountAll: mountAll };
})(window);
