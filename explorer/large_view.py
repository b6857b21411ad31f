"""The cards' script: the large view of a card's picture, clicks that refine a label's points, and a
histogram bar's count on hover or tap.

It runs once, when the cards' `gr.HTML` mounts (`js_on_load`), and listens on the cards' element, so
it keeps working as the cards are rendered again. The large view is one dialog on the same page (never
a new tab): at least 800 px wide on a desktop (the page scrolls inside it when a tall image needs more
height than the window), the screen's width on a phone; Close, Escape or a click beside it returns.
In the large view of a label's points (or mask) a click sends `trigger('click', {label, x, y, edit})`
with x, y in the working image's pixels (the pictures are drawn at that size: `.label-cards`
carries it), which the page passes to `Handlers.edit_points`; when the cards come back, the view shows
the label's new picture.
"""

from __future__ import annotations

LARGE_VIEW_MIN_PX = 800

CSS = """
#large-view { position: fixed; inset: 0; z-index: 1000; background: rgba(0, 0, 0, 0.75); overflow: auto;
  display: flex; justify-content: center; align-items: flex-start; padding: 12px; box-sizing: border-box; }
#large-view[hidden] { display: none; }
#large-view .lv-ramp { margin-top: 6px; }
#large-view .lv-ramp[hidden] { display: none; }
#large-view .lv-panel { font-family: var(--font, system-ui, sans-serif);
  background: var(--background-fill-primary, #ffffff); color: var(--body-text-color, #111111);
  border-radius: 10px; padding: 10px 14px 12px; max-width: 100%; box-sizing: border-box; }
#large-view .lv-bar { display: flex; justify-content: space-between; align-items: center; gap: 12px; }
#large-view .lv-title { font-size: 1.05rem; font-weight: 600; margin: 0; overflow-wrap: anywhere; }
#large-view button { font: inherit; font-size: 0.95rem; padding: 6px 14px; border-radius: 6px; cursor: pointer;
  border: 1px solid var(--border-color-primary, #9ca3af); background: var(--button-secondary-background-fill, #f3f4f6);
  color: inherit; }
#large-view button:focus-visible, #large-view input:focus-visible { outline: 3px solid #0072b2; outline-offset: 2px; }
#large-view .lv-tools { display: flex; flex-wrap: wrap; gap: 6px 18px; align-items: center; margin: 8px 0 6px;
  font-size: 0.95rem; }
#large-view .lv-tools[hidden] { display: none; }
#large-view .lv-modes { display: flex; flex-wrap: wrap; gap: 4px 14px; border: 0; padding: 0; margin: 0; }
#large-view .lv-modes legend { float: left; font-weight: 600; margin-right: 4px; padding: 0; }
#large-view .lv-modes label, #large-view .lv-show-mask { display: inline-flex; gap: 5px; align-items: center;
  cursor: pointer; }
#large-view .lv-status { margin: 0; flex-basis: 100%; }
#large-view .lv-image { display: block; height: auto; max-width: none; margin-top: 6px; border-radius: 4px; }
#large-view.refining .lv-image { cursor: crosshair; }
#large-view .lv-caption { margin: 6px 0 0; font-size: 0.95rem; }
"""
MEDIA_CSS = """
@media (max-width: 700px) {
  #large-view { padding: 0 !important; }
  #large-view .lv-panel { border-radius: 0 !important; padding: 8px 0 !important; width: 100% !important; min-height: 100% !important; }
  #large-view .lv-bar, #large-view .lv-tools, #large-view .lv-caption, #large-view .lv-ramp { padding: 0 10px !important; }
  #large-view .lv-image { width: 100% !important; border-radius: 0 !important; }
}
"""

# `element`, `trigger` and `watch` are given by gr.HTML (js_on_load). No user text is ever put into HTML
# here: labels and captions are set with textContent.
SCRIPT = r"""
const doc = element.ownerDocument;
const MIN_WIDTH = __MIN_WIDTH__;
let view = doc.getElementById('large-view');
if (!view) {
  view = doc.createElement('div');
  view.id = 'large-view';
  view.hidden = true;
  view.setAttribute('role', 'dialog');
  view.setAttribute('aria-modal', 'true');
  view.setAttribute('aria-labelledby', 'large-view-title');
  view.innerHTML = `
    <div class="lv-panel">
      <div class="lv-bar"><p id="large-view-title" class="lv-title"></p>
        <button type="button" class="lv-close">Close ✕</button></div>
      <div class="lv-tools" hidden>
        <fieldset class="lv-modes"><legend>A click on the picture</legend>
          <label><input type="radio" name="lv-edit" value="positive" checked> adds a positive point (+)</label>
          <label><input type="radio" name="lv-edit" value="negative"> adds a negative point (−)</label>
          <label><input type="radio" name="lv-edit" value="remove"> removes the nearest point</label>
        </fieldset>
        <button type="button" class="lv-reset">Reset points</button>
        <label class="lv-show-mask"><input type="checkbox"> show SAM's mask</label>
        <p class="lv-status" aria-live="polite"></p>
      </div>
      <div class="colour-bar lv-ramp" hidden><span>weak</span><span class="ramp"></span><span>strong match</span></div>
      <img class="lv-image" alt="">
      <p class="lv-caption"></p>
    </div>`;
  doc.body.appendChild(view);
}
const image = view.querySelector('.lv-image');
const tools = view.querySelector('.lv-tools');
const status = view.querySelector('.lv-status');
const showMask = view.querySelector('.lv-show-mask input');
const shown = {label: null, kind: null, method: null, opener: null, waiting: false};
view.__trigger = trigger;

function cardsRoot() { return element.querySelector('.label-cards'); }
function cardOf(label) {
  return [...element.querySelectorAll('.label-card')].find(card => card.dataset.label === label) || null;
}
function figureOf(card, kind, method) {
  if (!card) return null;
  return [...card.querySelectorAll('figure')].find(f => f.dataset.kind === kind
    && (kind !== 'map' || f.dataset.method === method)) || null;
}
function fit() {
  const root = cardsRoot();
  const wide = image.naturalWidth || Number(root && root.dataset.width) || 1;
  const high = image.naturalHeight || Number(root && root.dataset.height) || 1;
  const panel = view.querySelector('.lv-panel');
  if (window.innerWidth <= 700) { image.style.width = ''; panel.style.width = ''; return; }
  const room = window.innerWidth - 24 - 28;  // the dialog's and the panel's padding
  const chrome = view.querySelector('.lv-panel').offsetHeight - image.offsetHeight + 24;
  const byHeight = (window.innerHeight - chrome) * wide / high;
  const width = Math.round(Math.min(room, Math.max(MIN_WIDTH, byHeight)));
  image.style.width = width + 'px';
  panel.style.width = (width + 28) + 'px';
}
function refresh() {
  const card = cardOf(shown.label);
  const refining = shown.kind === 'points' || shown.kind === 'mask';
  const points = figureOf(card, 'points');
  const mask = figureOf(card, 'mask');
  const maskImage = mask && mask.querySelector('img');
  let figure = figureOf(card, shown.kind, shown.method);
  if (refining) figure = showMask.checked && maskImage ? mask : points;
  const picture = figure && figure.querySelector('img');
  if (!card || !picture) { close(); return; }
  view.classList.toggle('refining', refining);
  view.querySelector('.lv-ramp').hidden = figure.dataset.kind !== 'map';
  tools.hidden = !refining;
  showMask.parentElement.hidden = !maskImage;
  const what = {map: 'map', points: 'points for SAM', mask: "SAM's mask"}[figure.dataset.kind];
  const method = figure.dataset.kind === 'map' ? (figure.querySelector('img').alt.split(' map of ')[0] + ' ') : '';
  view.querySelector('.lv-title').textContent = shown.label + ' · ' + method + what;
  const caption = [figure, refining && figure === points && maskImage ? mask : null]
    .filter(Boolean).map(f => (f.querySelector('figcaption') || {}).textContent || '').join(' · ');
  view.querySelector('.lv-caption').textContent = refining ? caption.replace(/^Points for SAM: [^·]*·?\s*/, '') : caption;
  if (refining) {
    const positive = points.dataset.positive, negative = points.dataset.negative, mine = Number(points.dataset.mine);
    status.textContent = shown.waiting ? 'Updating the mask…'
      : positive + ' positive, ' + negative + ' negative point' + (negative === '1' ? '' : 's')
        + (mine ? ' (' + mine + ' of them yours)' : '') + '.'
        + (cardsRoot().dataset.sam === 'on' ? ' SAM draws the mask again after each click.' : '');
  }
  image.alt = picture.alt;
  if (image.getAttribute('src') !== picture.getAttribute('src')) image.src = picture.getAttribute('src');
  fit();
}
function open(label, kind, method, opener) {
  Object.assign(shown, {label, kind, method, opener, waiting: false});
  showMask.checked = kind === 'mask';
  view.hidden = false;
  doc.body.style.overflow = 'hidden';
  refresh();
  view.querySelector('.lv-close').focus();
}
function close() {
  if (view.hidden) return;
  view.hidden = true;
  doc.body.style.overflow = '';
  const card = cardOf(shown.label);
  const figure = figureOf(card, shown.kind, shown.method);
  const target = (figure && figure.querySelector('button.picture')) || shown.opener;
  if (target && target.isConnected) target.focus();
  shown.label = null;
}
element.addEventListener('click', event => {
  const button = event.target.closest('button.picture');
  if (button) {
    const figure = button.closest('figure');
    open(figure.closest('.label-card').dataset.label, figure.dataset.kind, figure.dataset.method, button);
    return;
  }
  pickBar(event);
});
function pickBar(event) {
  const bin = event.target.closest && event.target.closest('rect.bin');
  if (!bin) return;
  const box = bin.closest('.card-histogram');
  const readout = box && box.querySelector('.hist-readout');
  const title = bin.querySelector('title');
  if (!readout || !title) return;
  box.querySelectorAll('rect.bar.picked').forEach(other => other.classList.remove('picked'));
  const bar = bin.ownerSVGElement.querySelector('rect.bar[data-bin="' + bin.dataset.bin + '"]');
  if (bar) bar.classList.add('picked');
  readout.textContent = title.textContent;
  readout.classList.add('count');
}
element.addEventListener('mouseover', pickBar);
if (!view.__wired) {
  view.__wired = true;
  view.querySelector('.lv-close').addEventListener('click', () => view.__close());
  view.addEventListener('click', event => { if (event.target === view) view.__close(); });
  doc.addEventListener('keydown', event => { if (event.key === 'Escape' && !view.hidden) view.__close(); });
  window.addEventListener('resize', () => { if (!view.hidden) view.__fit(); });
  image.addEventListener('load', () => view.__fit());
  showMask.addEventListener('change', () => view.__refresh());
  view.querySelector('.lv-reset').addEventListener('click', () => view.__edit(0, 0, 'reset'));
  image.addEventListener('click', event => {
    if (!view.classList.contains('refining')) return;
    const box = image.getBoundingClientRect();
    const root = view.__root();
    const wide = Number(root.dataset.width), high = Number(root.dataset.height);
    const x = Math.min(wide - 1, Math.max(0, Math.floor((event.clientX - box.left) / box.width * wide)));
    const y = Math.min(high - 1, Math.max(0, Math.floor((event.clientY - box.top) / box.height * high)));
    view.__edit(x, y, view.querySelector('input[name=lv-edit]:checked').value);
  });
}
view.__close = close;
view.__fit = fit;
view.__refresh = refresh;
view.__root = cardsRoot;
view.__edit = (x, y, edit) => {
  shown.waiting = true;
  refresh();
  view.__trigger('click', {label: shown.label, x, y, edit});
  setTimeout(() => { if (shown.waiting) { shown.waiting = false; if (!view.hidden) refresh(); } }, 15000);
};
watch('value', () => { shown.waiting = false; if (!view.hidden) refresh(); });
""".replace("__MIN_WIDTH__", str(LARGE_VIEW_MIN_PX))
