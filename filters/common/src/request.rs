//! The request as every filter sees it: each fact (a header, an Envoy attribute) is read from
//! the host when something first needs it and then kept for the rest of the stream. Every read
//! is a host call that copies data into the VM (in Envoy a header costs 2 to 4 µs, an
//! attribute 4 to 5 µs: docs/benchmark.md), so in the bundle, where all stages share one view, the path,
//! method, client address, route and the consumer are read at most once per request; a header a
//! stage sets (the consumer) is seen by the later stages without being read back.
//!
//! Where a worker's requests need several request headers (the bundle's do: the credential,
//! the path, the method), the first one needed fetches them all in one call
//! ([`HeaderList`]), and the others are looked up in that copy: each read that returns data
//! costs Envoy a call back into the VM to allocate it, so one call for all is cheaper than
//! one per header. Request headers are then seen as they were at that first read; the
//! headers stages set are seen as set.

use crate::bytes::same_name;
use crate::header_list::HeaderList;
use crate::host::{HeaderMap, Host, HostError};

/// Envoy's route name.
pub const ROUTE_NAME: [&str; 2] = ["xds", "route_name"];
/// The cluster the router picked.
pub const CLUSTER_NAME: [&str; 2] = ["xds", "cluster_name"];
/// Envoy's trusted client address (see [`crate::client_ip`]).
pub const SOURCE_ADDRESS: [&str; 2] = ["source", "address"];

/// What a filter's logic may read about the request.
pub trait RequestFacts {
    /// A request header by lower-case name, pseudo-headers (`:path`, `:method`) included.
    fn header(&mut self, name: &str) -> Option<&[u8]>;
    /// An Envoy attribute, e.g. [`ROUTE_NAME`] (the paths are constants, so the view keeps
    /// them without a copy).
    fn property(&mut self, path: &'static [&'static str]) -> Option<&[u8]>;
}

/// Text views of the facts the filters match on (anything that is not UTF-8 matches nothing).
pub trait RequestText: RequestFacts {
    fn header_text(&mut self, name: &str) -> Option<&str> {
        self.header(name).and_then(|bytes| std::str::from_utf8(bytes).ok())
    }

    fn method(&mut self) -> Option<&str> {
        self.header_text(":method")
    }

    /// `:path`, with its query string.
    fn path(&mut self) -> Option<&str> {
        self.header_text(":path")
    }

    fn route(&mut self) -> Option<&str> {
        self.property(&ROUTE_NAME).and_then(|bytes| std::str::from_utf8(bytes).ok())
    }
}

impl<T: RequestFacts + ?Sized> RequestText for T {}

/// The facts of one stream read so far. It lives as long as the stream; a [`Request`] pairs it
/// with the host for one callback. One list for every kind of fact, allocated once per stream
/// with room for a request's usual handful, rather than an allocation per fact and name.
#[derive(Default)]
pub struct RequestMemo {
    facts: Vec<(Fact, Option<Vec<u8>>)>,
    /// The clock as read in the current callback (see [`RequestMemo::new_callback`]).
    clock: Option<Option<u64>>,
    /// Whether the first request header needed fetches them all (see [`RequestMemo::new`]).
    fetch_all: bool,
    /// Every request header, once fetched.
    request_headers: Option<HeaderList>,
    /// Lookups of request headers no stage set, answered by the host one by one or from
    /// `request_headers` (where a name looked up twice in the list counts twice).
    request_header_reads: u8,
}

/// The facts a stream usually reads (path, method, a credential, route, cluster, status).
const USUAL_FACTS: usize = 8;

/// What a remembered value is.
#[derive(PartialEq, Eq)]
enum Fact {
    RequestHeader(Name),
    ResponseHeader(Name),
    Property(&'static [&'static str]),
}

/// A header name as a fact's key, kept inline when short (nearly every header name is), so
/// remembering a header costs no allocation of its own.
#[derive(PartialEq, Eq)]
enum Name {
    Short { length: u8, bytes: [u8; SHORT_NAME] },
    Long(Box<str>),
}

const SHORT_NAME: usize = 30;

impl Name {
    fn new(name: &str) -> Name {
        let mut bytes = [0; SHORT_NAME];
        match (bytes.get_mut(..name.len()), u8::try_from(name.len())) {
            (Some(prefix), Ok(length)) => {
                prefix.copy_from_slice(name.as_bytes());
                Name::Short { length, bytes }
            }
            _ => Name::Long(name.into()),
        }
    }

    /// Header names compare without regard to ASCII case, as Envoy's do: a header a stage set
    /// as `X-Consumer` is the one another reads as `x-consumer`.
    fn is(&self, name: &str) -> bool {
        match self {
            Name::Short { length, bytes } => {
                bytes.get(..usize::from(*length)).is_some_and(|known| same_name(known, name.as_bytes()))
            }
            Name::Long(known) => same_name(known.as_bytes(), name.as_bytes()),
        }
    }
}

impl Fact {
    fn is_header(&self, map: HeaderMap, name: &str) -> bool {
        match (self, map) {
            (Fact::RequestHeader(known), HeaderMap::Request) | (Fact::ResponseHeader(known), HeaderMap::Response) => {
                known.is(name)
            }
            _ => false,
        }
    }
}

impl RequestMemo {
    /// The view of a new stream. With `fetch_all`, the first request header it needs fetches
    /// every request header in one host call; the driver asks for it when the worker's
    /// previous request needed more than one (see [`RequestMemo::read_several_headers`]).
    pub fn new(fetch_all: bool) -> RequestMemo {
        RequestMemo { fetch_all, ..RequestMemo::default() }
    }

    /// Whether this stream looked up more than one request header in the host's copy.
    pub fn read_several_headers(&self) -> bool {
        self.request_header_reads > 1
    }

    /// A new callback of the stream began: time has moved on, so the clock is read again.
    pub fn new_callback(&mut self) {
        self.clock = None;
    }

    /// The remembered value of `fact`, read with `read` the first time.
    fn remembered(
        &mut self,
        known: impl Fn(&Fact) -> bool,
        fact: impl FnOnce() -> Fact,
        read: impl FnOnce() -> Option<Vec<u8>>,
    ) -> Option<&[u8]> {
        let index = match self.facts.iter().position(|(seen, _)| known(seen)) {
            Some(index) => index,
            None => self.push(fact(), read()),
        };
        self.facts.get(index).and_then(|(_, value)| value.as_deref())
    }

    /// Adds a fact; returns its index.
    fn push(&mut self, fact: Fact, value: Option<Vec<u8>>) -> usize {
        if self.facts.capacity() == 0 {
            self.facts.reserve_exact(USUAL_FACTS);
        }
        self.facts.push((fact, value));
        self.facts.len() - 1
    }

    fn response_header(&mut self, host: &dyn Host, name: &str) -> Option<&[u8]> {
        let fact = || Fact::ResponseHeader(Name::new(name));
        let read = || host.header(HeaderMap::Response, name);
        self.remembered(|seen| seen.is_header(HeaderMap::Response, name), fact, read)
    }

    /// A request header: as a stage set it (or as read alone before), else from the fetched
    /// list, else read alone now.
    fn request_header(&mut self, host: &dyn Host, name: &str) -> Option<&[u8]> {
        let mut fact = self.request_header_fact(name);
        if fact.is_none() {
            self.request_header_reads = self.request_header_reads.saturating_add(1);
            if self.fetch_all && self.request_headers.is_none() {
                // Fetched once per stream; where the host refuses, headers are read one by one.
                self.fetch_all = false;
                self.request_headers = host.headers(HeaderMap::Request);
            }
            if self.request_headers.is_none() {
                fact = Some(self.push(Fact::RequestHeader(Name::new(name)), host.header(HeaderMap::Request, name)));
            }
        }
        self.request_header_value(fact, name)
    }

    /// A request header as the view already knows it: as a stage set it (or as read alone),
    /// else from the fetched list.
    fn known_request_header(&self, name: &str) -> Option<&[u8]> {
        self.request_header_value(self.request_header_fact(name), name)
    }

    /// Where `name` is among the facts (set by a stage, or read alone).
    fn request_header_fact(&self, name: &str) -> Option<usize> {
        self.facts.iter().position(|(seen, _)| seen.is_header(HeaderMap::Request, name))
    }

    /// The value of the fact at `fact`, or else `name` in the fetched list.
    fn request_header_value(&self, fact: Option<usize>, name: &str) -> Option<&[u8]> {
        match fact {
            Some(index) => self.facts.get(index).and_then(|(_, value)| value.as_deref()),
            None => self.request_headers.as_ref().and_then(|headers| headers.get(name)),
        }
    }
}

/// The current stream as seen from one callback: the host, and what is known of the request.
pub struct Request<'a> {
    pub host: &'a dyn Host,
    memo: &'a mut RequestMemo,
}

impl<'a> Request<'a> {
    pub fn new(host: &'a dyn Host, memo: &'a mut RequestMemo) -> Request<'a> {
        Request { host, memo }
    }

    /// The host's clock in nanoseconds, read once per callback (stages that run in one
    /// callback share the reading).
    pub fn now_nanos(&mut self) -> Option<u64> {
        let host = self.host;
        *self.memo.clock.get_or_insert_with(|| host.now_nanos())
    }

    /// A response header (read once; the response headers exist from the response phase on).
    pub fn response_header(&mut self, name: &str) -> Option<&[u8]> {
        self.memo.response_header(self.host, name)
    }

    /// Several request headers at once (each read at most once), for logic that needs them
    /// together without copying them out of the view.
    pub fn headers<const N: usize>(&mut self, names: [&str; N]) -> [Option<&[u8]>; N] {
        for name in names {
            self.memo.request_header(self.host, name);
        }
        let memo = &*self.memo;
        names.map(|name| memo.known_request_header(name))
    }

    /// Sets (or with `None` removes) a request header, and remembers the new value so that
    /// later stages see it without reading it back.
    pub fn set_header(&mut self, name: &str, value: Option<&str>) -> Result<(), HostError> {
        let result = self.host.set_header(HeaderMap::Request, name, value);
        let value = value.map(|value| value.as_bytes().to_vec());
        match self.memo.facts.iter_mut().find(|(known, _)| known.is_header(HeaderMap::Request, name)) {
            Some((_, known)) => *known = value,
            None => {
                self.memo.push(Fact::RequestHeader(Name::new(name)), value);
            }
        }
        result
    }
}

impl RequestFacts for Request<'_> {
    fn header(&mut self, name: &str) -> Option<&[u8]> {
        self.memo.request_header(self.host, name)
    }

    fn property(&mut self, path: &'static [&'static str]) -> Option<&[u8]> {
        let host = self.host;
        self.memo.remembered(|seen| *seen == Fact::Property(path), || Fact::Property(path), || host.property(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeHost;

    #[test]
    fn each_fact_is_read_from_the_host_once() {
        let host = FakeHost::default().with_request_header(":path", "/a?b").with_property(&ROUTE_NAME, "r");
        let mut memo = RequestMemo::default();
        let mut request = Request::new(&host, &mut memo);
        for _ in 0..3 {
            assert_eq!(request.path(), Some("/a?b"));
            assert_eq!(request.route(), Some("r"));
            assert_eq!(request.header("x-absent"), None);
        }
        assert_eq!(host.calls_named("header"), 2);
        assert_eq!(host.calls_named("property"), 1);
        // A later callback of the same stream still knows them.
        let mut request = Request::new(&host, &mut memo);
        assert_eq!(request.path(), Some("/a?b"));
        assert_eq!(host.calls_named("header"), 2);
    }

    #[test]
    fn headers_are_read_together_once_each() {
        let host = FakeHost::default().with_request_header(":method", "GET").with_request_header(":path", "/a");
        let mut memo = RequestMemo::default();
        let mut request = Request::new(&host, &mut memo);
        assert_eq!(request.headers([":method", ":path", "x-absent"]), [Some(&b"GET"[..]), Some(&b"/a"[..]), None]);
        assert_eq!(request.headers([":path", ":method"]), [Some(&b"/a"[..]), Some(&b"GET"[..])]);
        assert_eq!(host.calls_named("header"), 3);
    }

    #[test]
    fn with_fetch_all_one_call_brings_every_request_header() {
        let host = FakeHost::default()
            .with_request_header(":path", "/a")
            .with_request_header(":method", "GET")
            .with_request_header("authorization", "Bearer t")
            .with_request_header("x-gateway-consumer", "spoofed");
        let mut memo = RequestMemo::new(true);
        let mut request = Request::new(&host, &mut memo);
        assert_eq!(request.header("authorization"), Some(&b"Bearer t"[..]));
        request.set_header("authorization", None).unwrap();
        request.set_header("x-gateway-consumer", Some("ada")).unwrap();
        assert_eq!(request.headers([":path", ":method", "x-absent"]), [Some(&b"/a"[..]), Some(&b"GET"[..]), None]);
        assert_eq!(request.header("authorization"), None, "removed by a stage");
        assert_eq!(request.header("x-gateway-consumer"), Some(&b"ada"[..]), "as the stage set it");
        // A later callback of the stream looks in the same copy.
        let mut request = Request::new(&host, &mut memo);
        assert_eq!(request.method(), Some("GET"));
        assert_eq!((host.calls_named("headers"), host.calls_named("header")), (1, 0));
        assert!(memo.read_several_headers());
    }

    #[test]
    fn a_header_a_stage_set_is_seen_in_any_spelling() {
        let host = FakeHost::default().with_request_header("x-consumer", "spoofed");
        for fetch_all in [false, true] {
            let mut memo = RequestMemo::new(fetch_all);
            let mut request = Request::new(&host, &mut memo);
            request.set_header("X-Consumer", Some("ada")).unwrap();
            assert_eq!(request.header("x-consumer"), Some(&b"ada"[..]), "fetch_all {fetch_all}");
        }
    }

    #[test]
    fn without_fetch_all_headers_are_read_one_by_one() {
        let host = FakeHost::default().with_request_header(":path", "/a").with_request_header(":method", "GET");
        let mut memo = RequestMemo::new(false);
        assert_eq!(Request::new(&host, &mut memo).path(), Some("/a"));
        assert!(!memo.read_several_headers(), "one header");
        assert_eq!(Request::new(&host, &mut memo).method(), Some("GET"));
        assert_eq!((host.calls_named("headers"), host.calls_named("header")), (0, 2));
        assert!(memo.read_several_headers());
    }

    #[test]
    fn the_clock_is_read_once_per_callback() {
        let host = FakeHost::default().with_clock_millis(5);
        let mut memo = RequestMemo::default();
        assert_eq!(Request::new(&host, &mut memo).now_nanos(), Some(5_000_000));
        host.set_clock_millis(6);
        assert_eq!(Request::new(&host, &mut memo).now_nanos(), Some(5_000_000), "the same callback");
        memo.new_callback();
        assert_eq!(Request::new(&host, &mut memo).now_nanos(), Some(6_000_000));
        assert_eq!(host.calls_named("now_nanos"), 2);
    }

    #[test]
    fn a_header_set_by_one_stage_is_seen_by_the_next_without_a_read() {
        let host = FakeHost::default().with_request_header("x-consumer", "spoofed");
        let mut memo = RequestMemo::default();
        let mut request = Request::new(&host, &mut memo);
        request.set_header("x-consumer", Some("ada")).unwrap();
        assert_eq!(request.header("x-consumer"), Some(&b"ada"[..]));
        request.set_header("x-consumer", None).unwrap();
        assert_eq!(request.header("x-consumer"), None);
        assert_eq!(host.calls_named("header"), 0);
        assert_eq!(host.request_header("x-consumer"), None);
    }

    #[test]
    fn long_header_names_are_remembered_too() {
        let long = "x-a-header-name-longer-than-thirty-bytes";
        let host =
            FakeHost::default().with_request_header(long, "v").with_request_header("x-a-header-name-longer", "w");
        let mut memo = RequestMemo::default();
        let mut request = Request::new(&host, &mut memo);
        for _ in 0..2 {
            assert_eq!(request.header(long), Some(&b"v"[..]));
            assert_eq!(request.header("x-a-header-name-longer"), Some(&b"w"[..]));
            assert_eq!(request.response_header(long), None, "a response header is another fact");
        }
        assert_eq!(host.calls_named("header"), 3);
    }

    #[test]
    fn header_values_need_not_be_text() {
        let host = FakeHost::default().with_request_header_bytes(":method", b"G\xffT");
        let mut memo = RequestMemo::default();
        let mut request = Request::new(&host, &mut memo);
        assert_eq!(request.header(":method"), Some(&b"G\xffT"[..]));
        assert_eq!(request.method(), None);
    }
}
