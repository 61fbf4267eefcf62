// voxclass web page: pick a file or record, decode it in the browser, upload a WAV, show labels.
// Browsers record webm/ogg that the server's decoder (libsndfile) may not read, so every clip is
// decoded here with WebAudio and sent as 16-bit PCM WAV: any format this browser plays works.
"use strict";

const $ = (id) => document.getElementById(id);
// recordedSeconds: how long the last recording ran, from the recorder's start to the stop press.
const state = { samplingRate: 16000, recorder: null, recordingStarted: 0, recordedSeconds: 0 };

function token() {
  return $("token").value.trim();
}

function authHeaders() {
  return token() ? { Authorization: `Bearer ${token()}` } : {};
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  $("status").textContent = "";
}

function clearMessages() {
  $("error").hidden = true;
  $("error").textContent = "";
}

async function detailOf(response) {
  try {
    const body = await response.json();
    return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch {
    return response.statusText || "no details";
  }
}

async function loadModelInfo() {
  let response;
  try {
    response = await fetch("/v1/model", { headers: authHeaders() });
  } catch {
    $("model-info").textContent = "Cannot reach the server. Is it still running?";
    return;
  }
  if (response.status === 401) {
    $("token-section").hidden = false;
    $("model-info").textContent = token()
      ? "That token was not accepted. Check it and try again."
      : "Enter the access token to use this server.";
    return;
  }
  if (!response.ok) {
    $("model-info").textContent = `Could not read the model description: ${await detailOf(response)}`;
    return;
  }
  const model = await response.json();
  state.samplingRate = model.sampling_rate;
  $("model-info").textContent =
    `${model.labels.length} labels (${model.labels.join(", ")}), ` +
    `listens at ${model.sampling_rate} Hz, ${model.backend} backend.`;
}

// ---------------------------------------------------------------- WAV encoding

async function decodeToMono(blob) {
  // Decoding at the model's rate lets the browser resample, and keeps the upload small.
  const context = new AudioContext({ sampleRate: state.samplingRate });
  try {
    const audio = await context.decodeAudioData(await blob.arrayBuffer());
    const mono = new Float32Array(audio.length);
    for (let c = 0; c < audio.numberOfChannels; c++) {
      const channel = audio.getChannelData(c);
      for (let i = 0; i < audio.length; i++) mono[i] += channel[i] / audio.numberOfChannels;
    }
    return { samples: mono, rate: audio.sampleRate };
  } finally {
    context.close();
  }
}

function encodeWav(samples, rate) {
  const buffer = new ArrayBuffer(44 + samples.length * 2);
  const view = new DataView(buffer);
  const text = (offset, s) => [...s].forEach((ch, i) => view.setUint8(offset + i, ch.charCodeAt(0)));
  text(0, "RIFF");
  view.setUint32(4, 36 + samples.length * 2, true);
  text(8, "WAVE");
  text(12, "fmt ");
  view.setUint32(16, 16, true); // fmt chunk size
  view.setUint16(20, 1, true); // PCM
  view.setUint16(22, 1, true); // mono
  view.setUint32(24, rate, true);
  view.setUint32(28, rate * 2, true); // bytes per second
  view.setUint16(32, 2, true); // bytes per frame
  view.setUint16(34, 16, true); // bits per sample
  text(36, "data");
  view.setUint32(40, samples.length * 2, true);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    view.setInt16(44 + i * 2, s < 0 ? s * 0x8000 : s * 0x7fff, true);
  }
  return new Blob([buffer], { type: "audio/wav" });
}

function wavName(name) {
  return name.replace(/\.[^./]*$/, "") + ".wav";
}

// ---------------------------------------------------------------- classify

async function classify(blob, name) {
  clearMessages();
  $("result").hidden = true;
  if ($("player").src) URL.revokeObjectURL($("player").src); // one clip held in memory, not all
  $("player").src = URL.createObjectURL(blob);
  $("status").textContent = "Decoding the audio…";
  let upload = blob;
  let uploadName = name;
  try {
    const { samples, rate } = await decodeToMono(blob);
    if (samples.length === 0) {
      showError(`${name} holds no sound (0 samples). Pick or record another clip.`);
      return;
    }
    upload = encodeWav(samples, rate);
    uploadName = wavName(name);
  } catch {
    // This browser cannot decode it; the server may (or will say what is wrong with it).
  }
  const form = new FormData();
  form.append("file", upload, uploadName);
  form.append("top_k", String(Math.max(1, parseInt($("top-k").value, 10) || 5)));
  $("status").textContent = "Classifying…";
  let response;
  try {
    response = await fetch("/v1/classify", { method: "POST", body: form, headers: authHeaders() });
  } catch {
    showError("Cannot reach the server. Is it still running?");
    return;
  }
  if (!response.ok) {
    const detail = await detailOf(response);
    const why = {
      401: "The server needs a valid access token; enter it above and try again.",
      413: "The file is too large for this server.",
      415: "The server could not read this audio.",
      422: "The request was not understood.",
    }[response.status] || `The server answered with error ${response.status}.`;
    if (response.status === 401) $("token-section").hidden = false;
    showError(`${why} (${detail})`);
    return;
  }
  showResult(await response.json(), name);
}

function showResult(prediction, name) {
  $("status").textContent = `Classified ${prediction.duration.toFixed(2)} s of audio.`;
  $("source").textContent = name;
  const bars = $("bars");
  bars.replaceChildren();
  prediction.labels.forEach((label, i) => {
    const score = prediction.scores[i];
    const item = document.createElement("li");
    item.className = "prediction";
    item.innerHTML =
      '<span class="label"></span><span class="track"><span class="fill"></span></span>' +
      '<span class="score"></span>';
    item.querySelector(".label").textContent = label;
    item.querySelector(".fill").style.width = `${(score * 100).toFixed(1)}%`;
    item.querySelector(".score").textContent = score.toFixed(3);
    bars.append(item);
  });
  const rows = $("windows");
  rows.replaceChildren();
  for (const w of prediction.windows || []) {
    const row = rows.insertRow();
    [w.start.toFixed(1), w.end.toFixed(1), w.labels[0], w.scores[0].toFixed(3)].forEach((v) => {
      row.insertCell().textContent = v;
    });
  }
  $("timeline").hidden = !prediction.windows;
  $("result").hidden = false;
}

// ---------------------------------------------------------------- microphone

// The microphone's stream, or null after showing why there is none (`purpose`: what the
// user was about to do, for the message).
async function openMicrophone(purpose) {
  try {
    return await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (err) {
    showError(
      err.name === "NotAllowedError"
        ? `Microphone permission was denied. Allow it in the browser to ${purpose}.`
        : `No microphone available (${err.message}).`,
    );
    return null;
  }
}

async function toggleRecording() {
  const button = $("record");
  if (state.recorder) {
    clearInterval(state.recordingTimer);
    state.recordedSeconds = recordingSeconds();
    state.recorder.stop();
    return;
  }
  clearMessages();
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    showError("This browser cannot record here (recording needs https or localhost).");
    return;
  }
  const stream = await openMicrophone("record");
  if (!stream) return;
  const recorder = new MediaRecorder(stream);
  const chunks = [];
  recorder.ondataavailable = (event) => chunks.push(event.data);
  recorder.onstop = () => {
    stream.getTracks().forEach((track) => track.stop());
    state.recorder = null;
    button.textContent = "Record from microphone";
    button.classList.remove("recording");
    classify(new Blob(chunks, { type: recorder.mimeType }), "recording");
  };
  recorder.onstart = () => {
    state.recordingStarted = performance.now();
    const show = () => {
      $("status").textContent =
        `Recording… ${recordingSeconds().toFixed(1)} s, press again to stop.`;
    };
    show();
    state.recordingTimer = setInterval(show, 100);
  };
  recorder.start();
  state.recorder = recorder;
  button.textContent = "Stop and classify";
  button.classList.add("recording");
  $("status").textContent = "Recording… press again to stop.";
}

function recordingSeconds() {
  return state.recordingStarted ? (performance.now() - state.recordingStarted) / 1000 : 0;
}

// ---------------------------------------------------------------- live

// The microphone's samples reach this page through an AudioWorklet (128 frames per call); the
// page sends them on as raw f32 at the audio context's own rate, and the server resamples.
const TAP = `class Tap extends AudioWorkletProcessor {
  process(inputs) { if (inputs[0][0]) this.port.postMessage(inputs[0][0].slice(0)); return true; }
}
registerProcessor("tap", Tap);`;
const LIVE_SEND_SECONDS = 0.05; // audio per WebSocket message
const LIVE_ROWS = 400; // timeline rows kept on the page
// live: the running session (socket, audio context, microphone); liveEvents: every event of
// the last session, as the server sent it.
state.live = null;
state.liveEvents = [];

async function toggleLive() {
  if (state.live) {
    stopLive();
    return;
  }
  clearMessages();
  if (!navigator.mediaDevices || !window.AudioWorkletNode) {
    showError("This browser cannot listen live here (it needs https or localhost).");
    return;
  }
  const stream = await openMicrophone("listen live");
  if (!stream) return;
  const context = new AudioContext();
  await context.resume(); // a context made after an await may start suspended
  await context.audioWorklet.addModule(
    URL.createObjectURL(new Blob([TAP], { type: "application/javascript" })),
  );
  const tap = new AudioWorkletNode(context, "tap");
  context.createMediaStreamSource(stream).connect(tap);
  tap.connect(context.destination); // pulled by the graph; it writes no sound
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/v1/stream`);
  socket.binaryType = "arraybuffer";
  const live = { socket, context, stream, ready: false, blocks: [], queued: 0 };
  state.live = live;
  state.liveEvents = [];
  $("live-timeline").replaceChildren();
  $("live-view").hidden = false;
  $("live").textContent = "Stop live";
  $("live").classList.add("recording");
  $("live-status").textContent = "connecting…";
  socket.onopen = () => {
    const first = {
      sampling_rate: context.sampleRate,
      format: "f32",
      top_k: Math.max(1, parseInt($("top-k").value, 10) || 5),
    };
    if (token()) first.token = token();
    socket.send(JSON.stringify(first));
  };
  tap.port.onmessage = (event) => {
    if (!live.ready || socket.readyState !== WebSocket.OPEN) return;
    live.blocks.push(event.data);
    live.queued += event.data.length;
    if (live.queued >= LIVE_SEND_SECONDS * context.sampleRate) {
      const chunk = new Float32Array(live.queued);
      let at = 0;
      for (const block of live.blocks) {
        chunk.set(block, at);
        at += block.length;
      }
      live.blocks = [];
      live.queued = 0;
      socket.send(chunk.buffer);
    }
  };
  socket.onmessage = (message) => {
    const event = JSON.parse(message.data);
    state.liveEvents.push(event);
    if (event.type === "ready") {
      live.ready = true;
      $("live-status").textContent = "listening…";
    } else {
      showLiveEvent(event);
    }
  };
  socket.onclose = (event) => {
    releaseLive(live);
    if (event.code !== 1000) {
      if (event.code === 1008 && /token/.test(event.reason)) $("token-section").hidden = false;
      showError(`The live stream stopped: ${event.reason || `connection lost (${event.code})`}.`);
    }
    $("live-status").textContent = "stopped.";
  };
}

function stopLive() {
  const live = state.live;
  // The server answers the last events (the open segment) and then closes the socket.
  if (live.socket.readyState === WebSocket.OPEN) live.socket.send(JSON.stringify({ type: "end" }));
  else live.socket.close();
  releaseLive(live);
}

function releaseLive(live) {
  if (live.released) return;
  live.released = true;
  live.stream.getTracks().forEach((track) => track.stop());
  live.context.close();
  if (state.live === live) state.live = null;
  $("live").textContent = "Live";
  $("live").classList.remove("recording");
}

function showLiveEvent(event) {
  const list = $("live-timeline");
  const row = document.createElement("li");
  const time = document.createElement("span");
  time.className = "time";
  const text = document.createElement("span");
  text.className = "text";
  if (event.type === "hop") {
    row.className = event.speech ? "hop speech" : "hop silence";
    time.textContent = `${event.end.toFixed(1)} s`;
    text.textContent = event.speech ? `${event.labels[0]} ${event.scores[0].toFixed(3)}` : "·";
  } else if (event.type === "segment") {
    row.className = "segment";
    time.textContent = `${event.start.toFixed(2)}–${event.end.toFixed(2)} s`;
    text.textContent = `${event.labels[0]} ${event.scores[0].toFixed(3)}`;
  } else {
    return;
  }
  row.append(time, text);
  list.append(row);
  while (list.children.length > LIVE_ROWS) list.firstElementChild.remove();
  list.scrollTop = list.scrollHeight;
}

// ---------------------------------------------------------------- wiring

$("file").addEventListener("change", () => {
  const file = $("file").files[0];
  if (file) classify(file, file.name);
  $("file").value = ""; // picking the same file again classifies it again
});
$("record").addEventListener("click", toggleRecording);
$("live").addEventListener("click", toggleLive);
$("token").addEventListener("change", () => {
  sessionStorage.setItem("voxclass-token", token());
  loadModelInfo();
});
$("token").value = sessionStorage.getItem("voxclass-token") || "";
loadModelInfo();
