/* The route viewer of captum_influence_patterns.viz.interactive.
 *
 * Reads the page's JSON (<script id="cip-data">): {"view": "pattern", "document": a
 * pattern-v1 document, "routes": {name: [[pattern, ...] per example]}} or
 * {"view": "evaluation", "groups": [...], "sentences": [...]}. Every number it shows
 * comes from that JSON through num(), which records the JSON path of the value
 * (data-key) and the value itself (data-value), so tests can check them.
 */
(function () {
  'use strict';
  var SVGNS = 'http://www.w3.org/2000/svg';
  var POSITIVE = '#1a9641', NEGATIVE = '#d7191c';
  var REFERENCE = ['#2b6cb0', '#8e44ad', '#e67e22', '#16a085', '#7f8c8d', '#c0392b',
    '#2c3e50', '#b7950b'];
  var ROW = 18, COLUMN = 46, COLLAPSED = 10, STRIP = 190, TOP = 44, MAX_WIDTH = 6;
  var DATA = JSON.parse(document.getElementById('cip-data').textContent);
  var root = document.getElementById('cip-root');

  // ------------------------------------------------------------------ helpers
  function el(tag, attrs, parent, text) {
    var node = document.createElement(tag);
    for (var k in attrs || {}) node.setAttribute(k, attrs[k]);
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }
  function svgEl(tag, attrs, parent, text) {
    var node = document.createElementNS(SVGNS, tag);
    for (var k in attrs || {}) node.setAttribute(k, attrs[k]);
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }
  function fmt(value) {
    if (value === null || value === undefined) return '-';
    if (value === 0) return '0';
    return Number(value).toPrecision(4);
  }
  // A number of the JSON, shown with its path (key) and exact value.
  function num(parent, value, key, svgAttrs) {
    var node = svgAttrs ? svgEl('text', svgAttrs, parent) : el('span', {}, parent);
    node.setAttribute('class', 'num');
    node.setAttribute('data-key', key);
    node.setAttribute('data-value', value === null ? 'null' : String(value));
    node.textContent = fmt(value);
    return node;
  }
  // A ratio of two JSON numbers; blank ('-') where |g| is under the floor.
  function ratio(parent, top, bottom, topKey, bottomKey, floor) {
    var node = el('span', {'class': 'ratio', 'data-top': topKey,
      'data-bottom': bottomKey}, parent);
    var shown = top !== null && bottom !== null && Math.abs(bottom) >= floor &&
      bottom !== 0;
    node.textContent = shown ? (top / bottom).toFixed(3) : '-';
    if (shown) node.setAttribute('data-value', String(top / bottom));
    return node;
  }
  function row(table, cells) {
    var tr = el('tr', {}, table);
    cells.forEach(function (c) {
      var td = el('td', {}, tr);
      if (typeof c === 'function') c(td); else td.textContent = c;
    });
    return tr;
  }
  function cleanToken(token) {
    return String(token).replace(/^##/, '').replace(/^\u0120/, '').replace(/^\u2581/, '');
  }
  function colour(sign) { return sign < 0 ? NEGATIVE : POSITIVE; }
  function download(name, blob) {
    var a = el('a', {href: URL.createObjectURL(blob), download: name}, document.body);
    a.click();
    setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  }

  // ------------------------------------------------------------------ export
  var STYLES = ['fill', 'fill-opacity', 'stroke', 'stroke-width', 'stroke-opacity',
    'stroke-dasharray', 'opacity', 'font-size', 'font-weight', 'font-family',
    'display', 'text-anchor', 'dominant-baseline'];
  function standaloneSvg(svg) {
    var copy = svg.cloneNode(true);
    var from = svg.querySelectorAll('*'), to = copy.querySelectorAll('*');
    for (var i = 0; i < from.length; i++) {
      var style = getComputedStyle(from[i]), text = '';
      STYLES.forEach(function (name) {
        text += name + ':' + style.getPropertyValue(name) + ';';
      });
      to[i].setAttribute('style', text);
      to[i].removeAttribute('class');
    }
    copy.setAttribute('xmlns', SVGNS);
    var background = svgEl('rect', {x: 0, y: 0, width: '100%', height: '100%',
      fill: '#fff'});
    copy.insertBefore(background, copy.firstChild);
    return '<?xml version="1.0" encoding="UTF-8"?>\n' +
      new XMLSerializer().serializeToString(copy);
  }
  function exportSvg(svg, stem) {
    download(stem + '.svg', new Blob([standaloneSvg(svg)], {type: 'image/svg+xml'}));
  }
  function exportPng(svg, stem) {
    var width = +svg.getAttribute('data-width'), height = +svg.getAttribute('data-height');
    var image = new Image(), scale = 2;
    image.onload = function () {
      var canvas = el('canvas', {width: width * scale, height: height * scale});
      var context = canvas.getContext('2d');
      context.scale(scale, scale);
      context.drawImage(image, 0, 0, width, height);
      canvas.toBlob(function (blob) { download(stem + '.png', blob); }, 'image/png');
    };
    image.src = 'data:image/svg+xml;charset=utf-8,' +
      encodeURIComponent(standaloneSvg(svg));
  }

  // ------------------------------------------------------------------ layout
  // Columns: the embedding (layer 0) and layers 1..L; collapsed layers are narrow.
  // Layer columns narrow down to 18 px so that deep models fit the canvas's width.
  function columns(layers, collapsed, canvas) {
    var open = 0;
    for (var l = 1; l <= layers; l++) if (!collapsed[l]) open++;
    var room = canvas.clientWidth - STRIP - 24 - 70 - COLLAPSED * (layers - open);
    var width = canvas.clientWidth && open ?
      Math.max(18, Math.min(COLUMN, Math.floor(room / open))) : COLUMN;
    var xs = [STRIP + 24];
    for (l = 1; l <= layers; l++) {
      xs.push(xs[l - 1] + (collapsed[l] ? COLLAPSED : width));
    }
    return xs;
  }
  function rowY(j) { return TOP + j * ROW + ROW / 2; }

  // keyOf(j): the JSON path of g at position j (null: none shown).
  function drawFrame(svg, tokens, g, keyOf, output, layers, xs, onToken) {
    var width = xs[layers] + 60, height = TOP + tokens.length * ROW + 10;
    svg.setAttribute('data-width', width);
    svg.setAttribute('data-height', height);
    svgEl('text', {x: xs[0], y: 14, 'text-anchor': 'middle', 'font-size': 11},
      svg, 'emb');
    for (var l = 1; l <= layers; l++) {
      svgEl('line', {x1: xs[l], x2: xs[l], y1: TOP - 6, y2: height - 6,
        stroke: '#eee', 'class': 'grid'}, svg);
      if (xs[l] - xs[l - 1] > COLLAPSED || l === layers) {
        svgEl('text', {x: xs[l], y: 14, 'text-anchor': 'middle', 'font-size': 11,
          'class': 'layer-label'}, svg, String(l));
      }
    }
    var scale = 0;
    g.forEach(function (v) { if (v !== null) scale = Math.max(scale, Math.abs(v)); });
    tokens.forEach(function (token, j) {
      var y = rowY(j);
      var group = svgEl('g', {'class': 'token', 'data-position': j}, svg);
      svgEl('text', {x: 4, y: y + 4, 'font-size': 10, fill: '#888'}, group, String(j));
      var value = g[j] === null || g[j] === undefined ? 0 : g[j];
      var shade = scale ? Math.abs(value) / scale : 0;
      svgEl('rect', {x: 26, y: y - ROW / 2 + 1, width: 96, height: ROW - 2, rx: 3,
        'class': 'label', fill: colour(value), 'fill-opacity': 0.08 + 0.6 * shade,
        stroke: j === output ? '#000' : 'none'}, group);
      var label = cleanToken(token);
      if (label.length > 14) label = label.slice(0, 13) + '\u2026';
      svgEl('text', {x: 30, y: y + 4, 'font-size': 11,
        'font-weight': j === output ? 'bold' : 'normal'}, group, label);
      if (keyOf(j) !== null) {
        num(group, g[j], keyOf(j), {x: STRIP - 4, y: y + 4, 'font-size': 10,
          'text-anchor': 'end'});
      }
      for (var l = 0; l <= layers; l++) {
        svgEl('circle', {cx: xs[l], cy: y, r: 1.3, fill: '#bbb', 'class': 'cell'}, svg);
      }
      if (onToken) {
        group.addEventListener('mouseenter', function () { onToken(j, 'enter'); });
        group.addEventListener('mouseleave', function () { onToken(j, 'leave'); });
        group.addEventListener('click', function () { onToken(j, 'click'); });
      }
    });
    if (output !== null && output !== undefined) {
      svgEl('rect', {x: xs[layers] - 7, y: rowY(output) - 8, width: 14, height: 16,
        fill: 'none', stroke: '#000', 'class': 'output-box'}, svg);
      svgEl('text', {x: xs[layers] + 10, y: rowY(output) + 4, 'font-size': 11},
        svg, 'output');
    }
    svgEl('text', {x: 4, y: 30, 'font-size': 10, fill: '#555'}, svg, 'pos  token');
    svgEl('text', {x: STRIP - 4, y: 30, 'font-size': 10, fill: '#555',
      'text-anchor': 'end'}, svg, 'g');
    return {width: width, height: height};
  }

  function setSize(svg, zoom) {
    var width = +svg.getAttribute('data-width'), height = +svg.getAttribute('data-height');
    svg.setAttribute('viewBox', '0 0 ' + width + ' ' + height);
    svg.setAttribute('width', width * zoom);
    svg.setAttribute('height', height * zoom);
  }

  // ------------------------------------------------------------------ controls
  function controlsBar(parent, state, redraw, svgOf, stem) {
    var bar = el('div', {'class': 'controls'}, parent);
    var filter = el('label', {}, bar, '|g| share \u2265 ');
    var slider = el('input', {type: 'range', min: 0, max: 0.5, step: 0.005,
      value: state.share, 'class': 'cip-share'}, filter);
    var shareText = el('span', {'class': 'cip-share-text'}, filter,
      ' ' + (100 * state.share).toFixed(1) + '%');
    slider.addEventListener('input', function () {
      state.share = +slider.value;
      shareText.textContent = ' ' + (100 * state.share).toFixed(1) + '%';
      redraw();
    });
    var collapse = el('label', {}, bar);
    var box = el('input', {type: 'checkbox', 'class': 'cip-collapse'}, collapse);
    box.checked = state.collapse;
    collapse.appendChild(document.createTextNode(' collapse skip-only layers'));
    box.addEventListener('change', function () { state.collapse = box.checked; redraw(); });
    var zoom = el('span', {}, bar, 'zoom ');
    [['\u2212', 1 / 1.25], ['+', 1.25], ['1:1', 0]].forEach(function (pair) {
      var b = el('button', {type: 'button', 'class': 'zoom'}, zoom, pair[0]);
      b.addEventListener('click', function () {
        state.zoom = pair[1] ? state.zoom * pair[1] : 1;
        setSize(svgOf(), state.zoom);
      });
    });
    var exportSpan = el('span', {}, bar, 'export ');
    var svgButton = el('button', {type: 'button', 'class': 'cip-export-svg'}, exportSpan,
      'SVG');
    svgButton.addEventListener('click', function () { exportSvg(svgOf(), stem); });
    var pngButton = el('button', {type: 'button', 'class': 'cip-export-png'}, exportSpan,
      'PNG');
    pngButton.addEventListener('click', function () { exportPng(svgOf(), stem); });
    return shareText;
  }
  function wheelZoom(canvas, state, svgOf) {
    canvas.addEventListener('wheel', function (event) {
      if (!event.ctrlKey) return;
      event.preventDefault();
      state.zoom *= event.deltaY < 0 ? 1.1 : 1 / 1.1;
      setSize(svgOf(), state.zoom);
    }, {passive: false});
  }

  // ------------------------------------------------------------------ one explanation
  // Draws example b of a pattern-v1 document into parent; refs: {name: [[pattern]]}.
  function PatternView(parent, doc, refs, b, stem) {
    var state = {share: 0.05, collapse: false, zoom: 1, pinned: null, shown: {}};
    var tokens = (doc.tokens && doc.tokens[b]) ||
      doc.input_ids[b].map(function (_, j) { return '#' + j; });
    var patterns = doc.patterns[b];
    var g = doc.token_influence[b];
    var output = doc.output_positions[b];
    var layers = 0;
    patterns.forEach(function (p) { layers = Math.max(layers, p.nodes.length); });
    var total = 0;
    patterns.forEach(function (p) { total += Math.abs(p.token_influence || 0); });
    var floor = 0.01 * total;
    var maxInfluence = 0;
    patterns.forEach(function (p) {
      p.nodes.forEach(function (n) {
        maxInfluence = Math.max(maxInfluence, Math.abs(n.influence || 0));
      });
    });
    var refNames = Object.keys(refs || {});

    var title = doc.text || tokens.join(' ');
    el('h1', {}, parent, title);
    if (doc.qoi) el('div', {'class': 'sub'}, parent, 'QoI: ' + doc.qoi);
    var svg;
    var shareText = controlsBar(parent, state, redraw, function () { return svg; }, stem);
    if (refNames.length) {
      var refBar = el('div', {'class': 'controls'}, parent, 'reference routes: ');
      refNames.forEach(function (name, i) {
        var label = el('label', {style: 'color:' + REFERENCE[i % REFERENCE.length]},
          refBar);
        var box = el('input', {type: 'checkbox', 'class': 'cip-route-toggle',
          'data-route': name}, label);
        label.appendChild(document.createTextNode(' ' + name));
        box.addEventListener('change', function () {
          state.shown[name] = box.checked; redraw();
        });
      });
    }
    var main = el('div', {'class': 'main'}, parent);
    var canvas = el('div', {'class': 'canvas'}, main);
    var side = el('div', {'class': 'side'}, main);
    var info = el('div', {'class': 'cip-route-info'}, side);
    el('p', {'class': 'hint'}, info,
      'Hover a token to see its route; click a node to see the candidates the ' +
      'search compared at that layer. Ctrl+wheel zooms.');
    var candidates = el('div', {'class': 'cip-candidates'}, side);
    wheelZoom(canvas, state, function () { return svg; });

    function visible(p) {
      return Math.abs(p.token_influence || 0) >= state.share * total;
    }
    function collapsedLayers() {
      var out = {};
      if (!state.collapse) return out;
      for (var l = 1; l <= layers; l++) {
        out[l] = patterns.filter(visible).every(function (p) {
          var n = p.nodes[l - 1];
          return !n || n.kind === 'skip';
        });
      }
      return out;
    }
    function drawRoute(p, xs, label, stroke, key) {
      var group = svgEl('g', {'class': 'route' + (label === 'guided' ? '' :
        ' reference'), 'data-source': p.source, 'data-label': label}, svg);
      if (label === 'guided' && !visible(p)) group.classList.add('filtered');
      var previous = p.positions[0];
      p.nodes.forEach(function (n) {
        // Reference routes are scored as a whole: their nodes carry no influence.
        var l = n.layer, width = maxInfluence && n.influence !== null ?
          0.8 + (MAX_WIDTH - 0.8) * Math.abs(n.influence) / maxInfluence : 2;
        svgEl('line', {x1: xs[l - 1], y1: rowY(previous), x2: xs[l],
          y2: rowY(n.position), stroke: stroke, 'stroke-width': width,
          'stroke-linecap': 'round', 'stroke-opacity': 0.75, 'class': 'seg',
          'stroke-dasharray': n.kind === 'skip' ? '5,3' : 'none',
          'data-layer': l}, group);
        previous = n.position;
      });
      p.nodes.forEach(function (n, i) {
        var x = xs[n.layer], y = rowY(n.position), node;
        var attrs = {'class': 'node', 'data-source': p.source, 'data-layer': n.layer,
          'data-position': n.position, 'data-kind': n.kind, 'data-label': label,
          'data-node': key + '/nodes/' + i, fill: n.kind === 'head' ? stroke : '#fff',
          stroke: stroke, 'stroke-width': 1.5};
        if (n.kind === 'head') {
          attrs.x = x - 4; attrs.y = y - 4; attrs.width = 8; attrs.height = 8;
          attrs['data-head'] = n.head;
          node = svgEl('rect', attrs, group);
          svgEl('text', {x: x + 5, y: y - 5, 'font-size': 9, fill: stroke,
            'class': 'head-label'}, group, 'h' + n.head);
        } else {
          attrs.cx = x; attrs.cy = y; attrs.r = 3.5;
          node = svgEl('circle', attrs, group);
        }
        node.addEventListener('click', function (event) {
          event.stopPropagation();
          showCandidates(p, n.layer, label, key, node);
        });
      });
      group.addEventListener('mouseenter', function () {
        if (label === 'guided') highlight(p.source, true);
      });
      group.addEventListener('mouseleave', function () {
        if (label === 'guided') highlight(state.pinned, false);
      });
      return group;
    }
    function redraw() {
      canvas.innerHTML = '';
      svg = svgEl('svg', {'class': 'cip-svg', 'data-layers': layers}, canvas);
      var collapsed = collapsedLayers();
      svg.setAttribute('data-collapsed', Object.keys(collapsed).filter(function (l) {
        return collapsed[l]; }).join(','));
      var xs = columns(layers, collapsed, canvas);
      drawFrame(svg, tokens, g, function (j) {
        return 'token_influence/' + b + '/' + j; }, output, layers, xs,
        function (j, what) {
          if (what === 'enter') highlight(j, true);
          else if (what === 'leave') highlight(state.pinned, false);
          else state.pinned = state.pinned === j ? null : j;
        });
      refNames.forEach(function (name, i) {
        if (!state.shown[name]) return;
        (refs[name][b] || []).forEach(function (p, k) {
          if (visible(p)) {
            drawRoute(p, xs, name, REFERENCE[i % REFERENCE.length],
              'routes/' + name + '/' + b + '/' + k);
          }
        });
      });
      patterns.forEach(function (p, k) {
        drawRoute(p, xs, 'guided', colour(p.sign || p.token_influence),
          'patterns/' + b + '/' + k);
      });
      setSize(svg, state.zoom);
      var count = patterns.filter(visible).length;
      svg.setAttribute('data-visible', count);
      shareText.textContent =
        ' ' + (100 * state.share).toFixed(1) + '% (' + count + ' of ' +
        patterns.length + ' sources)';
      highlight(state.pinned, false);
    }
    function patternOf(source) {
      for (var k = 0; k < patterns.length; k++) {
        if (patterns[k].source === source) return k;
      }
      return -1;
    }
    function highlight(source, hover) {
      svg.querySelectorAll('.highlight').forEach(function (node) {
        node.classList.remove('highlight');
      });
      svg.classList.remove('focus');
      var k = source === null ? -1 : patternOf(source);
      if (k < 0) { if (!hover || source === null) return; }
      var token = svg.querySelector('.token[data-position="' + source + '"]');
      if (token) token.classList.add('highlight');
      if (k < 0) { routeInfo(source, -1); return; }
      var group = svg.querySelector('.route[data-label="guided"][data-source="' +
        source + '"]');
      group.classList.add('highlight');
      group.querySelectorAll('.node').forEach(function (node) {
        node.classList.add('highlight');
      });
      // On top; moved only once, since moving the hovered node cancels a click.
      if (svg.lastChild !== group) svg.appendChild(group);
      svg.classList.add('focus');
      routeInfo(source, k);
    }
    function routeInfo(source, k) {
      info.innerHTML = '';
      el('h2', {}, info, 'Position ' + source + ': ' + cleanToken(tokens[source]));
      if (k < 0) {
        el('p', {'class': 'hint'}, info, source === output ?
          'The output position (read by the QoI).' : 'Not a source.');
        return;
      }
      var p = patterns[k], key = 'patterns/' + b + '/' + k;
      var table = el('table', {'class': 'route-values'}, info);
      row(table, ['g', function (td) { num(td, p.token_influence, key + '/token_influence'); }]);
      row(table, ['I(\u03c0\u1d49)', function (td) {
        num(td, p.embedding_influence, key + '/embedding_influence'); }]);
      row(table, ['I(\u03c0\u1d43)', function (td) {
        num(td, p.influence, key + '/influence'); }]);
      row(table, ['I(\u03c0\u1d49)/g', function (td) {
        ratio(td, p.embedding_influence, p.token_influence,
          key + '/embedding_influence', key + '/token_influence', floor); }]);
      row(table, ['I(\u03c0\u1d43)/g', function (td) {
        ratio(td, p.influence, p.token_influence, key + '/influence',
          key + '/token_influence', floor); }]);
      var steps = el('table', {'class': 'route-steps'}, info);
      row(steps, ['layer', 'pos', 'node', 'influence']);
      p.nodes.forEach(function (n, i) {
        row(steps, [String(n.layer), String(n.position),
          n.kind === 'head' ? 'head ' + n.head : 'skip',
          function (td) { num(td, n.influence, key + '/nodes/' + i + '/influence'); }]);
      });
    }
    function showCandidates(p, layer, label, key, node) {
      svg.querySelectorAll('.node.selected').forEach(function (other) {
        other.classList.remove('selected');
      });
      node.classList.add('selected');
      candidates.innerHTML = '';
      var n = p.nodes[layer - 1], sign = p.sign || 1;
      el('h2', {}, candidates, (label === 'guided' ? '' : label + ': ') + 'source ' +
        p.source + ' (' + cleanToken(tokens[p.source]) + '), layer ' + layer);
      var list = el('div', {'class': 'cip-candidate-list', 'data-source': p.source,
        'data-layer': layer, 'data-label': label}, candidates);
      var stored = false;
      function stage(name, title, values, labels, won, valueKey) {
        if (!values || !values.length) return;
        stored = true;
        el('h2', {}, list, title);
        var order = values.map(function (_, i) { return i; });
        order.sort(function (a, c) { return sign * (values[c] - values[a]); });
        var table = el('table', {'class': 'candidates', 'data-stage': name}, list);
        order.forEach(function (i) {
          var tr = row(table, [i === won ? '\u2713' : '', labels[i],
            function (td) { num(td, values[i], valueKey + '/' + i); }]);
          tr.setAttribute('class', 'candidate' + (i === won ? ' won' : ''));
          tr.setAttribute('data-index', i);
        });
      }
      var pc = p.position_candidates && p.position_candidates[layer - 1];
      stage('position', 'Stage A: positions j, I(h^' + layer + '_j)', pc,
        (pc || []).map(function (_, j) { return j + ' ' + cleanToken(tokens[j]); }),
        p.positions[layer], key + '/position_candidates/' + (layer - 1));
      var nc = p.node_candidates && p.node_candidates[layer - 1];
      stage('node', 'Stage B: heads and skip at position ' + n.position, nc,
        (nc || []).map(function (_, i) {
          return i === nc.length - 1 ? 'skip' : 'head ' + i; }),
        n.kind === 'skip' ? (nc || []).length - 1 : n.head,
        key + '/node_candidates/' + (layer - 1));
      var fc = p.ffn_candidates && p.ffn_candidates[layer - 1];
      stage('ffn', 'Feed-forward branch', fc, ['mlp', 'residual'],
        n.ffn === 'mlp' ? 0 : 1, key + '/ffn_candidates/' + (layer - 1));
      side.scrollTop = candidates.offsetTop - side.offsetTop;
      if (!stored) {
        el('p', {'class': 'hint'}, list, 'No candidates stored for this route ' +
          '(a reference route, or a search that keeps none).');
        var table = el('table', {}, list);
        row(table, ['node influence', function (td) {
          num(td, n.influence, key + '/nodes/' + (layer - 1) + '/influence'); }]);
        row(table, ['I(\u03c0\u1d49) of the route', function (td) {
          num(td, p.embedding_influence, key + '/embedding_influence'); }]);
        row(table, ['I(\u03c0\u1d43) of the route', function (td) {
          num(td, p.influence, key + '/influence'); }]);
      }
    }
    redraw();
    return {redraw: redraw};
  }

  // ------------------------------------------------------------------ evaluation
  function EvaluationView(parent) {
    var groups = DATA.groups, sentences = DATA.sentences;
    var state = {share: 0.05, collapse: false, zoom: 1, group: 0};
    el('h1', {}, parent, DATA.title || 'Influence patterns by task and form');
    var svg;
    controlsBar(parent, state, redraw, function () { return svg; }, 'aggregate');
    var main = el('div', {'class': 'main'}, parent);
    var left = el('div', {'class': 'side', style: 'width: 210px'}, main);
    el('h2', {}, left, 'Groups (task \u00d7 form)');
    var groupList = el('ul', {'class': 'groups'}, left);
    var canvas = el('div', {'class': 'canvas'}, main);
    var side = el('div', {'class': 'side'}, main);
    wheelZoom(canvas, state, function () { return svg; });
    groups.forEach(function (group, i) {
      var li = el('li', {'data-group': i}, groupList,
        group.task + ' ' + group.form + ' (' + group.sentences.length + ')');
      li.addEventListener('click', function () { state.group = i; redraw(); });
    });
    function redraw() {
      var group = groups[state.group];
      groupList.querySelectorAll('li').forEach(function (li) {
        li.classList.toggle('selected', +li.getAttribute('data-group') === state.group);
      });
      canvas.innerHTML = '';
      svg = svgEl('svg', {'class': 'cip-svg', 'data-layers': group.layers}, canvas);
      var total = 0;
      group.sources.forEach(function (s) { total += Math.abs(s.mean_g); });
      var shown = {};
      group.sources.forEach(function (s) {
        shown[s.source] = Math.abs(s.mean_g) >= state.share * total;
      });
      var collapsed = {};
      if (state.collapse) {
        for (var l = 1; l <= group.layers; l++) collapsed[l] = true;
        group.edges.forEach(function (e) {
          if (shown[e.source] && e.kind === 'head') collapsed[e.layer] = false;
        });
      }
      var xs = columns(group.layers, collapsed, canvas);
      var g = group.tokens.map(function () { return null; }), index = {};
      group.sources.forEach(function (s, k) { g[s.source] = s.mean_g; index[s.source] = k; });
      drawFrame(svg, group.tokens, g, function (j) {
        return j in index ? 'groups/' + state.group + '/sources/' + index[j] + '/mean_g' :
          null; }, group.output_position, group.layers, xs, null);
      // Sources sharing an edge are drawn side by side (lanes), as in the figure.
      var lanes = {};
      group.edges.forEach(function (e) {
        if (!shown[e.source]) return;
        var key = [e.layer, e.start, e.end, e.kind].join(',');
        (lanes[key] = lanes[key] || []).push(e.source);
      });
      group.edges.forEach(function (e) {
        if (!shown[e.source]) return;
        var lane = lanes[[e.layer, e.start, e.end, e.kind].join(',')];
        var shift = (lane.indexOf(e.source) - (lane.length - 1) / 2) *
          Math.min(MAX_WIDTH, (ROW - 4) / lane.length);
        var line = svgEl('line', {x1: xs[e.layer - 1], y1: rowY(e.start) + shift,
          x2: xs[e.layer], y2: rowY(e.end) + shift, stroke: colour(e.mean_g),
          'stroke-width': 0.6 + (MAX_WIDTH - 0.6) * e.fraction,
          'stroke-opacity': 0.7, 'stroke-linecap': 'round',
          'stroke-dasharray': e.kind === 'skip' ? '5,3' : 'none',
          'class': 'seg', 'data-source': e.source, 'data-layer': e.layer}, svg);
        if (e.head !== null) {
          svgEl('text', {x: (xs[e.layer - 1] + xs[e.layer]) / 2,
            y: (rowY(e.start) + rowY(e.end)) / 2 + shift - 3, 'font-size': 9,
            fill: colour(e.mean_g), 'text-anchor': 'middle'}, svg, 'h' + e.head);
        }
        svgEl('title', {}, line, 'source ' + e.source + ': ' + e.count + ' of ' +
          group.sentences.length + ' sentences');
      });
      setSize(svg, state.zoom);
      showSentences(group);
    }
    function showSentences(group) {
      side.innerHTML = '';
      el('h2', {}, side, group.task + ' ' + group.form + ': ' +
        group.sentences.length + ' sentences');
      el('p', {'class': 'hint'}, side, 'Width: share of the sentences whose route ' +
        'uses the edge; colour: sign of the mean g. Click a sentence to open it.');
      var listBox = el('ul', {'class': 'sentences'}, side);
      group.sentences.forEach(function (s) {
        var li = el('li', {'data-sentence': s}, listBox, sentences[s].text);
        li.addEventListener('click', function () { openSentence(s); });
      });
    }
    function openSentence(s) {
      var overlay = el('div', {'class': 'cip', id: 'cip-sentence',
        style: 'position:fixed;inset:0;background:#fff;z-index:10'}, document.body);
      var back = el('button', {type: 'button', id: 'cip-back'}, overlay,
        '\u2190 back to the groups');
      back.addEventListener('click', function () { overlay.remove(); });
      // The sentence view numbers its values by their path in its own document.
      PatternView(overlay, sentences[s].document, sentences[s].document.routes || {},
        0, 'sentence-' + s);
    }
    redraw();
  }

  // A batch: one view at a time, chosen by example.
  function showExample(b) {
    root.innerHTML = '';
    var count = DATA.document.patterns.length;
    if (count > 1) {
      var label = el('label', {}, root, 'example ');
      var select = el('select', {'class': 'cip-example'}, label);
      for (var i = 0; i < count; i++) el('option', {value: i}, select, String(i));
      select.value = String(b);
      select.addEventListener('change', function () { showExample(+select.value); });
    }
    PatternView(root, DATA.document, DATA.document.routes || {}, b, 'pattern-' + b);
  }
  if (DATA.view === 'evaluation') EvaluationView(root);
  else showExample(DATA.example || 0);
  root.setAttribute('data-ready', '1');
})();
