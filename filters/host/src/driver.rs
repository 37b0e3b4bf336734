//! Runs a module's stages through Envoy's callbacks (which [`crate::entry`] hands here): one
//! [`Chain`] per configured root context, holding the stages, and one [`ChainHttp`] per request
//! holding each stage's stream state and the shared request view. Stages run in order on the
//! request (Envoy's decoder order) and in reverse on the response (encoder order), as separate
//! filters would; a stage that pauses holds the later ones until it says the request may go on.

use crate::abi;
use crate::context_ids::as_stream;
use crate::proxy_host::{plugin_configuration, take_host_calls, ProxyHost};
use gateway_common::counter::BatchedCounter;
use gateway_common::host::{Host, COUNTER_FLUSH_PERIOD};
use gateway_common::request::{Request, RequestMemo};
use gateway_common::stage::{Flow, Stage, StageStream};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::time::Duration;

/// Builds a module's stages from its plugin configuration; errors name the field.
pub type ChainBuilder = fn(configuration: &[u8], host: &dyn Host) -> Result<Vec<Box<dyn Stage>>, String>;

/// What one worker keeps for one configured plugin: the stages, the paused streams a stage
/// may wake, and the counts of boundary crossings (host calls and callbacks) that the
/// benchmark reads.
pub(crate) struct Chain {
    /// The host as this plugin sees it (its shared-data keys and metric names).
    host: Rc<ProxyHost>,
    stages: Vec<Box<dyn Stage>>,
    paused: RefCell<HashMap<u32, Weak<ChainHttp>>>,
    tick: Cell<Duration>,
    /// Whether the worker's last finished request needed more than one request header: the
    /// next one then fetches them all in one host call (see [`RequestMemo::new`]).
    several_request_headers: Cell<bool>,
    host_calls: BatchedCounter,
    callbacks: BatchedCounter,
}

impl Chain {
    /// The chain of the plugin being configured (from the root context's `on_configure`);
    /// `None`, with the reason logged, when its configuration is refused.
    pub(crate) fn configure(name: &str, build: ChainBuilder) -> Option<Rc<Chain>> {
        let host = Rc::new(ProxyHost::for_plugin(name));
        let stages = match plugin_configuration().and_then(|bytes| build(&bytes, host.as_ref())) {
            Ok(stages) => stages,
            Err(reason) => {
                log::error!("{name}: {reason}");
                return None;
            }
        };
        let chain = Chain {
            stages,
            paused: RefCell::new(HashMap::new()),
            tick: Cell::new(Duration::ZERO),
            several_request_headers: Cell::new(false),
            host_calls: BatchedCounter::define(host.as_ref(), "gateway_host_calls_total"),
            callbacks: BatchedCounter::define(host.as_ref(), "gateway_vm_callbacks_total"),
            host,
        };
        chain.retick();
        if chain.tick.get().is_zero() {
            log::error!("{name}: no timer (needed for metrics and key set fetches)");
            return None;
        }
        Some(Rc::new(chain))
    }

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
            match abi::set_tick_period(wanted) {
                Ok(()) => self.tick.set(wanted),
                Err(status) => log::warn!("cannot set the tick period to {wanted:?}: {status}"),
            }
        }
    }

    /// Lets stage `stage` decide again for the paused streams it names, and continues each
    /// one it lets go. Runs only in the root context's own callbacks, where switching the
    /// effective stream cannot disturb another request; calls a stream's stages start here
    /// are answered to that stream.
    fn wake(&self, stage: usize, context_ids: Vec<u32>) {
        for context_id in context_ids {
            let Some(stream) = self.paused.borrow().get(&context_id).and_then(Weak::upgrade) else { continue };
            // The client may have left meanwhile; its stream is gone and so is the request.
            if abi::set_effective_context(context_id).is_err() {
                continue;
            }
            let Ok(mut state) = stream.state.try_borrow_mut() else { continue };
            state.begin();
            if state.paused_at != Some(stage) {
                continue;
            }
            as_stream(context_id, || {
                let flow = state.with_stage(stage, |stage, request| stage.on_wake(request)).unwrap_or(Flow::Continue);
                state.continue_after(self, stage, flow, context_id);
            });
        }
    }

    fn flush(&self) {
        self.host_calls.add(take_host_calls());
        self.host_calls.flush(self.host.as_ref());
        self.callbacks.flush(self.host.as_ref());
    }

    pub(crate) fn on_tick(&self) {
        for (index, stage) in self.stages.iter().enumerate() {
            let wakes = stage.on_tick(self.host.as_ref());
            if !wakes.is_empty() {
                self.wake(index, wakes);
            }
        }
        self.flush();
        self.retick();
    }

    /// The answer to an HTTP call the worker itself made (a key set fetch).
    pub(crate) fn on_call_response(&self, token: u32, headers: usize, body_size: usize) {
        self.callback();
        for (index, stage) in self.stages.iter().enumerate() {
            if let Some(wakes) = stage.on_call_response(self.host.as_ref(), token, headers, body_size) {
                self.wake(index, wakes);
                self.retick();
                return;
            }
        }
        log::warn!("an answer for unknown call {token}; ignored");
    }

    /// No stage makes gRPC calls of its own (only for a request), so this is one it forgot.
    pub(crate) fn on_grpc_response(&self, token: u32, _status: u32, _message_size: usize) {
        self.callback();
        log::warn!("an answer for unknown gRPC call {token}; ignored");
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
            if let Err(status) = abi::resume_request() {
                log::warn!("cannot resume a paused request: {status}");
            }
        }
    }
}

/// One request's stream context.
pub(crate) struct ChainHttp {
    chain: Rc<Chain>,
    context_id: u32,
    state: RefCell<ChainStream>,
}

impl ChainHttp {
    pub(crate) fn new(chain: Rc<Chain>, context_id: u32) -> ChainHttp {
        chain.callback();
        let state = ChainStream {
            host: Rc::clone(&chain.host),
            stages: chain.stages.iter().map(|stage| stage.new_stream()).collect(),
            memo: RequestMemo::new(chain.several_request_headers.get()),
            paused_at: None,
            request_buffered: 0,
        };
        ChainHttp { chain, context_id, state: RefCell::new(state) }
    }

    /// The stream's state, unless a callback of the same stream is running (Envoy does not
    /// nest them, but a refusal here costs nothing and cannot abort the VM).
    fn state(&self) -> Option<std::cell::RefMut<'_, ChainStream>> {
        self.chain.callback();
        self.state.try_borrow_mut().ok()
    }

    pub(crate) fn on_request_headers(self: &Rc<Self>) -> Flow {
        let Some(mut state) = self.state() else { return Flow::Continue };
        let flow = state.begin().request_headers_from(0, self.context_id);
        if flow == Flow::Pause {
            self.chain.paused.borrow_mut().insert(self.context_id, Rc::downgrade(self));
            // Only a held request makes a stage want a faster tick (auth waiting for a fetch).
            self.chain.retick();
        }
        flow
    }

    pub(crate) fn on_request_body(&self, body_size: usize, end_of_stream: bool) -> Flow {
        let Some(mut state) = self.state() else { return Flow::Continue };
        let new_bytes = body_size.saturating_sub(state.request_buffered);
        // A request held at its headers stays held: its body waits in Envoy's buffer.
        let mut flow = if state.paused_at.is_some() { Flow::Pause } else { Flow::Continue };
        for stage in &mut state.stages {
            if stage.on_request_body(new_bytes, end_of_stream) == Flow::Pause {
                flow = Flow::Pause;
            }
        }
        state.request_buffered = if flow == Flow::Pause { body_size } else { 0 };
        flow
    }

    pub(crate) fn on_request_trailers(&self) -> Flow {
        let Some(mut state) = self.state() else { return Flow::Continue };
        let mut flow = if state.paused_at.is_some() { Flow::Pause } else { Flow::Continue };
        for stage in &mut state.stages {
            if stage.on_request_trailers() == Flow::Pause {
                flow = Flow::Pause;
            }
        }
        flow
    }

    pub(crate) fn on_response_headers(&self) -> Flow {
        let Some(mut state) = self.state() else { return Flow::Continue };
        state.begin();
        let mut flow = Flow::Continue;
        for index in (0..state.stages.len()).rev() {
            if state.with_stage(index, |stage, request| stage.on_response_headers(request)) == Some(Flow::Pause) {
                flow = Flow::Pause;
            }
        }
        flow
    }

    pub(crate) fn on_response_body(&self, body_size: usize, end_of_stream: bool) -> Flow {
        let Some(mut state) = self.state() else { return Flow::Continue };
        let mut flow = Flow::Continue;
        for stage in state.stages.iter_mut().rev() {
            if stage.on_response_body(body_size, end_of_stream) == Flow::Pause {
                flow = Flow::Pause;
            }
        }
        flow
    }

    pub(crate) fn on_log(&self) {
        let Some(mut state) = self.state() else { return };
        state.begin();
        for index in 0..state.stages.len() {
            state.with_stage(index, |stage, request| stage.on_log(request));
        }
        self.chain.several_request_headers.set(state.memo.read_several_headers());
    }

    /// The stream is gone: a stage can no longer wake it.
    pub(crate) fn on_delete(&self) {
        self.chain.callback();
        // Most streams never paused: skip hashing their id into an empty map.
        let mut paused = self.chain.paused.borrow_mut();
        if !paused.is_empty() {
            paused.remove(&self.context_id);
        }
    }

    pub(crate) fn on_call_response(&self, token: u32, headers: usize, body_size: usize) {
        let Some(mut state) = self.state() else { return };
        state.begin().answered(&self.chain, self.context_id, |stage, request| {
            stage.on_call_response(request, token, headers, body_size)
        });
    }

    pub(crate) fn on_grpc_response(&self, token: u32, status: u32, message_size: usize) {
        let Some(mut state) = self.state() else { return };
        state.begin().answered(&self.chain, self.context_id, |stage, request| {
            stage.on_grpc_response(request, token, status, message_size)
        });
    }
}
