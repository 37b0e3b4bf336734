//! What one filter is to the module that runs it: a [`Stage`] per worker (its compiled config
//! and state) that makes a [`StageStream`] per request. A separate module (`auth.wasm`) runs
//! one stage; the bundle (`gateway.wasm`) runs several in order in one context, sharing one
//! [`Request`] view. `gateway-host` drives both with the same code.

use crate::host::Host;
use crate::request::Request;
use std::time::Duration;

/// What the stream does after a stage's callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// The stage answered the request itself, or waits for something (a call, a key set); it
    /// says [`Flow::Continue`] from a later callback when the request may go on.
    Pause,
}

pub trait Stage {
    /// The state of one new request.
    fn new_stream(&self) -> Box<dyn StageStream>;

    /// How often the stage wants [`Stage::on_tick`] now; `None` when it needs no more than a
    /// counter flush ([`crate::host::COUNTER_FLUSH_PERIOD`]).
    fn tick_period(&self) -> Option<Duration> {
        None
    }

    /// Periodic work of the worker (counter flushes, background fetches). Returns the streams
    /// (context ids) to wake: see [`StageStream::on_wake`].
    fn on_tick(&self, host: &dyn Host) -> Vec<u32>;

    /// The answer to an HTTP call the stage made outside any request (e.g. a key set fetch):
    /// `None` when the token is not the stage's, else the streams to wake.
    fn on_call_response(&self, _host: &dyn Host, _token: u32, _headers: usize, _body_size: usize) -> Option<Vec<u32>> {
        None
    }
}

pub trait StageStream {
    /// `context_id` names the stream for [`Stage::on_tick`]'s wake-ups.
    fn on_request_headers(&mut self, request: &mut Request, context_id: u32) -> Flow;

    /// `new_bytes`: the size of the chunk that just arrived.
    fn on_request_body(&mut self, _new_bytes: usize, _end_of_stream: bool) -> Flow {
        Flow::Continue
    }

    fn on_request_trailers(&mut self) -> Flow {
        Flow::Continue
    }

    fn on_response_headers(&mut self, _request: &mut Request) -> Flow {
        Flow::Continue
    }

    fn on_response_body(&mut self, _new_bytes: usize, _end_of_stream: bool) -> Flow {
        Flow::Continue
    }

    /// Once per stream, after the response (or local reply, or reset).
    fn on_log(&mut self, _request: &mut Request) {}

    /// The answer to an HTTP call this stream made: `None` when the token is not this stage's.
    fn on_call_response(
        &mut self,
        _request: &mut Request,
        _token: u32,
        _headers: usize,
        _body_size: usize,
    ) -> Option<Flow> {
        None
    }

    /// The answer to a gRPC call this stream made: `None` when the token is not this stage's.
    fn on_grpc_response(&mut self, _request: &mut Request, _token: u32, _status: u32, _size: usize) -> Option<Flow> {
        None
    }

    /// The stage's worker woke this paused stream (see [`Stage::on_tick`]).
    fn on_wake(&mut self, _request: &mut Request) -> Flow {
        Flow::Continue
    }
}

/// Builds a stage from its JSON configuration; errors name the field.
pub type StageBuilder = fn(configuration: &[u8], host: &dyn Host) -> Result<Box<dyn Stage>, String>;
