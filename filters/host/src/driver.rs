//! Runs a module's stages through Envoy's callbacks: one root context per worker holding the
//! stages, one HTTP context per request holding each stage's stream state and the shared
//! request view. Stages run in order on the request (Envoy's decoder order) and in reverse on
//! the response (encoder order), as separate filters would; a stage that pauses holds the
//! later ones until it says the request may go on.

use crate::proxy_host::{plugin_configuration, record_calls, recorded_calls, take_host_calls, ProxyHost};
use gateway_common::counter::BatchedCounter;
use gateway_common::host::{Host, COUNTER_FLUSH_PERIOD};
use gateway_common::request::{Request, RequestMemo};
use gateway_common::stage::{Flow, Stage, StageStream};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::OnceLock;
use std::time::Duration;

/// Builds a module's stages from its plugin configuration; errors name the field.
pub type ChainBuilder = fn(configuration: &[u8], host: &dyn Host) -> Result<Vec<Box<dyn Stage>>, String>;

/// The module's name and stage builder (the SDK takes a plain `fn` for new root contexts).
static MODULE: OnceLock<(&str, ChainBuilder)> = OnceLock::new();

/// Registers the module's root context; called once from the module's `_initialize`.
pub fn install(name: &'static str, build: ChainBuilder) {
    // Also installs the SDK's panic hook, which logs a panic at critical level.
    proxy_wasm::set_log_level(LogLevel::Info);
    let _ = MODULE.set((name, build));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        let (name, build) = MODULE.get().copied().unwrap_or(("gateway", no_stages));
        Box::new(ChainRoot { name, build, chain: None })
    });
}

fn no_stages(_: &[u8], _: &dyn Host) -> Result<Vec<Box<dyn Stage>>, String> {
    Err("the module registered no stages".into())
}

/// What one worker keeps: the stages, the paused streams a stage may wake, and the counts of
/// boundary crossings (host calls and callbacks) that the benchmark reads.
struct Chain {
    /// The host as this plugin sees it (its shared-data keys and metric names).
    host: Rc<ProxyHost>,
    stages: Vec<Box<dyn Stage>>,
    paused: RefCell<HashMap<u32, Weak<RefCell<ChainStream>>>>,
    /// Calls that paused streams' stages started from the root's callbacks, to the stream's
    /// context id: their answers come to the root (see `record_calls`).
    root_started_calls: RefCell<HashMap<u32, u32>>,
    tick: Cell<Duration>,
    /// Whether the worker's last finished request needed more than one request header: the
    /// next one then fetches them all in one host call (see [`RequestMemo::new`]).
    several_request_headers: Cell<bool>,
    host_calls: BatchedCounter,
    callbacks: BatchedCounter,
}

struct ChainRoot {
    name: &'static str,
    build: ChainBuilder,
    chain: Option<Rc<Chain>>,
}

impl Chain {
    fn callback(&self) {
        self.callbacks.add(1);
    }

    /// The shortest tick any stage wants now (a counter flush at the least).
    fn wanted_tick(&self) -> Duration {
        self.stages.iter().filter_map(|stage| stage.tick_period()).fold(COUNTER_FLUSH_PERIOD, Duration::min)
    }

    /// Applies a change of the wanted tick (from any context: it sets the root's).
    fn retick(&self) {
        let wanted = self.wanted_tick();
        if wanted != self.tick.get() {
            match hostcalls::set_tick_period(wanted) {
                Ok(()) => self.tick.set(wanted),
                Err(status) => log::warn!("cannot set the tick period to {wanted:?}: {status:?}"),
            }
        }
    }

    /// Lets stage `stage` decide again for the paused streams it names, and continues each
    /// one it lets go. Runs only in the root context's own callbacks, where switching the
    /// effective stream cannot disturb another request.
    fn wake(&self, stage: usize, context_ids: Vec<u32>) {
        for context_id in context_ids {
            let Some(stream) = self.paused.borrow().get(&context_id).and_then(Weak::upgrade) else { continue };
            // The client may have left meanwhile; its stream is gone and so is the request.
            if hostcalls::set_effective_context(context_id).is_err() {
                continue;
            }
            let Ok(mut stream) = stream.try_borrow_mut() else { continue };
            stream.begin();
            if stream.paused_at != Some(stage) {
                continue;
            }
            record_calls();
            let flow = stream.with_stage(stage, |stage, request| stage.on_wake(request)).unwrap_or(Flow::Continue);
            stream.continue_after(self, stage, flow, context_id);
            self.note_root_started_calls(context_id);
        }
    }

    fn note_root_started_calls(&self, context_id: u32) {
        let mut calls = self.root_started_calls.borrow_mut();
        calls.extend(recorded_calls().into_iter().map(|token| (token, context_id)));
    }

    /// The answer to a call a paused stream's stage started from a root callback: handed to
    /// that stream, as if the stream had received it. False when the call is not one of those.
    fn answer_for_stream(
        &self,
        token: u32,
        answer: impl Fn(&mut dyn StageStream, &mut Request) -> Option<Flow>,
    ) -> bool {
        let Some(context_id) = self.root_started_calls.borrow_mut().remove(&token) else { return false };
        let Some(stream) = self.paused.borrow().get(&context_id).and_then(Weak::upgrade) else { return true };
        if hostcalls::set_effective_context(context_id).is_err() {
            return true;
        }
        if let Ok(mut stream) = stream.try_borrow_mut() {
            record_calls();
            stream.begin().answered(self, context_id, answer);
            self.note_root_started_calls(context_id);
        }
        true
    }

    fn flush(&self) {
        self.host_calls.add(take_host_calls());
        self.host_calls.flush(self.host.as_ref());
        self.callbacks.flush(self.host.as_ref());
    }
}

impl Context for ChainRoot {
    fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        let Some(chain) = &self.chain else { return };
        chain.callback();
        let for_stream = |stage: &mut dyn StageStream, request: &mut Request| {
            stage.on_call_response(request, token_id, num_headers, body_size)
        };
        if chain.answer_for_stream(token_id, for_stream) {
            return;
        }
        for (index, stage) in chain.stages.iter().enumerate() {
            if let Some(wakes) = stage.on_call_response(chain.host.as_ref(), token_id, num_headers, body_size) {
                chain.wake(index, wakes);
                chain.retick();
                return;
            }
        }
        log::warn!("{}: an answer for unknown call {token_id}; ignored", self.name);
    }

    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        let Some(chain) = &self.chain else { return };
        chain.callback();
        let for_stream = |stage: &mut dyn StageStream, request: &mut Request| {
            stage.on_grpc_response(request, token_id, status_code, response_size)
        };
        if !chain.answer_for_stream(token_id, for_stream) {
            log::warn!("{}: an answer for unknown gRPC call {token_id}; ignored", self.name);
        }
    }
}

impl RootContext for ChainRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let host = Rc::new(ProxyHost::for_plugin(self.name));
        let stages = match plugin_configuration().and_then(|bytes| (self.build)(&bytes, host.as_ref())) {
            Ok(stages) => stages,
            Err(reason) => {
                log::error!("{}: {reason}", self.name);
                return false;
            }
        };
        let chain = Chain {
            stages,
            paused: RefCell::new(HashMap::new()),
            root_started_calls: RefCell::new(HashMap::new()),
            tick: Cell::new(Duration::ZERO),
            several_request_headers: Cell::new(false),
            host_calls: BatchedCounter::define(host.as_ref(), "gateway_host_calls_total"),
            callbacks: BatchedCounter::define(host.as_ref(), "gateway_vm_callbacks_total"),
            host,
        };
        chain.retick();
        if chain.tick.get().is_zero() {
            log::error!("{}: no timer (needed for metrics and key set fetches)", self.name);
            return false;
        }
        self.chain = Some(Rc::new(chain));
        true
    }

    fn on_tick(&mut self) {
        let Some(chain) = &self.chain else { return };
        for (index, stage) in chain.stages.iter().enumerate() {
            let wakes = stage.on_tick(chain.host.as_ref());
            if !wakes.is_empty() {
                chain.wake(index, wakes);
            }
        }
        chain.flush();
        chain.retick();
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let chain = self.chain.clone()?;
        chain.callback();
        let stream = ChainStream {
            host: Rc::clone(&chain.host),
            stages: chain.stages.iter().map(|stage| stage.new_stream()).collect(),
            memo: RequestMemo::new(chain.several_request_headers.get()),
            paused_at: None,
            request_buffered: 0,
        };
        Some(Box::new(ChainHttp { chain, context_id, stream: Rc::new(RefCell::new(stream)) }))
    }
}

/// One request's state for every stage, and the request view they share.
struct ChainStream {
    host: Rc<ProxyHost>,
    stages: Vec<Box<dyn StageStream>>,
    memo: RequestMemo,
    /// The stage that holds the request (it waits, or it answered).
    paused_at: Option<usize>,
    /// Request body bytes Envoy holds for us: after a paused body callback, the next one
    /// reports the whole buffer, not the new chunk.
    request_buffered: usize,
}

impl ChainStream {
    /// Called at the start of every callback of the stream.
    fn begin(&mut self) -> &mut ChainStream {
        self.memo.new_callback();
        self
    }

    fn with_stage<T>(&mut self, index: usize, run: impl FnOnce(&mut dyn StageStream, &mut Request) -> T) -> Option<T> {
        let stage = self.stages.get_mut(index)?;
        let mut request = Request::new(self.host.as_ref(), &mut self.memo);
        Some(run(stage.as_mut(), &mut request))
    }

    /// Runs the request headers through the stages from `first` on; stops at the first that
    /// pauses.
    fn request_headers_from(&mut self, first: usize, context_id: u32) -> Flow {
        self.paused_at = None;
        for index in first..self.stages.len() {
            let flow = self.with_stage(index, |stage, request| stage.on_request_headers(request, context_id));
            if flow == Some(Flow::Pause) {
                self.paused_at = Some(index);
                return Flow::Pause;
            }
        }
        Flow::Continue
    }

    /// Hands a call's answer to the stage that made the call, and continues the request if
    /// that stage held it and now lets it go.
    fn answered(
        &mut self,
        chain: &Chain,
        context_id: u32,
        answer: impl Fn(&mut dyn StageStream, &mut Request) -> Option<Flow>,
    ) {
        for index in 0..self.stages.len() {
            if let Some(Some(flow)) = self.with_stage(index, &answer) {
                if self.paused_at == Some(index) {
                    self.continue_after(chain, index, flow, context_id);
                }
                return;
            }
        }
        log::warn!("an answer for a call this request did not make; ignored");
    }

    /// After stage `stage` decided `flow` for a paused request: run the rest of the stages
    /// and let the request go on if they all do.
    fn continue_after(&mut self, chain: &Chain, stage: usize, flow: Flow, context_id: u32) {
        if flow == Flow::Pause {
            return;
        }
        if self.request_headers_from(stage + 1, context_id) == Flow::Continue {
            chain.paused.borrow_mut().remove(&context_id);
            if let Err(status) = hostcalls::resume_http_request() {
                log::warn!("cannot resume a paused request: {status:?}");
            }
        }
    }
}

struct ChainHttp {
    chain: Rc<Chain>,
    context_id: u32,
    stream: Rc<RefCell<ChainStream>>,
}

impl ChainHttp {
    fn call_answered(&mut self, answer: impl Fn(&mut dyn StageStream, &mut Request) -> Option<Flow>) {
        self.chain.callback();
        let Ok(mut stream) = self.stream.try_borrow_mut() else { return };
        stream.begin().answered(&self.chain, self.context_id, answer);
    }
}

impl Context for ChainHttp {
    fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        self.call_answered(|stage, request| stage.on_call_response(request, token_id, num_headers, body_size));
    }

    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        self.call_answered(|stage, request| stage.on_grpc_response(request, token_id, status_code, response_size));
    }

    fn on_done(&mut self) -> bool {
        self.chain.callback();
        // Most streams never paused: skip hashing their id into an empty map.
        let mut paused = self.chain.paused.borrow_mut();
        if !paused.is_empty() {
            paused.remove(&self.context_id);
        }
        let mut root_started = self.chain.root_started_calls.borrow_mut();
        if !root_started.is_empty() {
            root_started.retain(|_, context_id| *context_id != self.context_id);
        }
        true
    }
}

fn action(flow: Flow) -> Action {
    match flow {
        Flow::Continue => Action::Continue,
        Flow::Pause => Action::Pause,
    }
}

impl HttpContext for ChainHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.chain.callback();
        let Ok(mut stream) = self.stream.try_borrow_mut() else { return Action::Continue };
        let flow = stream.begin().request_headers_from(0, self.context_id);
        if flow == Flow::Pause {
            self.chain.paused.borrow_mut().insert(self.context_id, Rc::downgrade(&self.stream));
            // Only a held request makes a stage want a faster tick (auth waiting for a fetch).
            self.chain.retick();
        }
        action(flow)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.chain.callback();
        let Ok(mut stream) = self.stream.try_borrow_mut() else { return Action::Continue };
        let new_bytes = body_size.saturating_sub(stream.request_buffered);
        // A request held at its headers stays held: its body waits in Envoy's buffer.
        let mut flow = if stream.paused_at.is_some() { Flow::Pause } else { Flow::Continue };
        for stage in &mut stream.stages {
            if stage.on_request_body(new_bytes, end_of_stream) == Flow::Pause {
                flow = Flow::Pause;
            }
        }
        stream.request_buffered = if flow == Flow::Pause { body_size } else { 0 };
        action(flow)
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        self.chain.callback();
        let Ok(mut stream) = self.stream.try_borrow_mut() else { return Action::Continue };
        let mut flow = if stream.paused_at.is_some() { Flow::Pause } else { Flow::Continue };
        for stage in &mut stream.stages {
            if stage.on_request_trailers() == Flow::Pause {
                flow = Flow::Pause;
            }
        }
        action(flow)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.chain.callback();
        let Ok(mut stream) = self.stream.try_borrow_mut() else { return Action::Continue };
        stream.begin();
        let mut flow = Flow::Continue;
        for index in (0..stream.stages.len()).rev() {
            if stream.with_stage(index, |stage, request| stage.on_response_headers(request)) == Some(Flow::Pause) {
                flow = Flow::Pause;
            }
        }
        action(flow)
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.chain.callback();
        let Ok(mut stream) = self.stream.try_borrow_mut() else { return Action::Continue };
        let mut flow = Flow::Continue;
        for stage in stream.stages.iter_mut().rev() {
            if stage.on_response_body(body_size, end_of_stream) == Flow::Pause {
                flow = Flow::Pause;
            }
        }
        action(flow)
    }

    fn on_log(&mut self) {
        self.chain.callback();
        let Ok(mut stream) = self.stream.try_borrow_mut() else { return };
        stream.begin();
        for index in 0..stream.stages.len() {
            stream.with_stage(index, |stage, request| stage.on_log(request));
        }
        self.chain.several_request_headers.set(stream.memo.read_several_headers());
    }
}
