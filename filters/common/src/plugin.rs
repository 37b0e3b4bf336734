//! Which filter instance this is. Envoy runs every plugin with the same `vm_id` in one VM per
//! worker, and shared data belongs to the VM id, not to a plugin; Envoy's stats are one
//! namespace for the whole process. So two instances of one filter (two `ratelimit` plugins on
//! two listeners, say) would share one bucket table, one set of label caps and one set of
//! metrics unless each names what it keeps. They do, by their plugin name (the Wasm filter's
//! `config.name`, Envoy's `plugin_name` attribute):
//! - every shared-data key is prefixed with the plugin name;
//! - every metric gets a `plugin` label, unless the plugin is named like its module
//!   (`metrics` for `metrics.wasm`, `gateway` for the bundle), as the shipped configs name
//!   them: one instance per module keeps the plain series names.

use crate::label_value;

/// Envoy's attribute holding the plugin's `config.name`.
pub const PLUGIN_NAME: [&str; 1] = ["plugin_name"];

/// How one plugin names its shared-data keys and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PluginScope {
    key_prefix: String,
    metric_suffix: String,
}

impl PluginScope {
    /// The scope of plugin `plugin_name` running `module` (`metrics`, …, `gateway`).
    pub fn new(plugin_name: &str, module: &str) -> PluginScope {
        // The length makes the prefix unambiguous whatever characters the name holds.
        let key_prefix = format!("{}:{plugin_name}/", plugin_name.len());
        let metric_suffix = if plugin_name == module || plugin_name.is_empty() {
            String::new()
        } else {
            // A label value keeps to the characters the stats tags can take apart.
            let value = label_value::sanitize(plugin_name.as_bytes()).unwrap_or_default();
            format!(".plugin.{value}")
        };
        PluginScope { key_prefix, metric_suffix }
    }

    /// Writes the shared-data key this plugin stores `key` under into `scoped` (replacing what
    /// it held: the caller reuses one buffer, so a shared-data call allocates nothing).
    pub fn key_into(&self, key: &str, scoped: &mut String) {
        scoped.clear();
        scoped.push_str(&self.key_prefix);
        scoped.push_str(key);
    }

    /// The stat name this plugin defines metric `name` as.
    pub fn metric(&self, name: &str) -> String {
        format!("{name}{}", self.metric_suffix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl PluginScope {
        fn key(&self, key: &str) -> String {
            let mut scoped = String::from("left over");
            self.key_into(key, &mut scoped);
            scoped
        }
    }

    #[test]
    fn two_plugins_keep_apart_what_they_store() {
        let (public, internal) = (PluginScope::new("public", "ratelimit"), PluginScope::new("internal", "ratelimit"));
        assert_ne!(public.key("gateway_ratelimit.seed"), internal.key("gateway_ratelimit.seed"));
        assert_eq!(public.key("gateway_ratelimit.seed"), "6:public/gateway_ratelimit.seed");
        // Names that would run together as plain prefixes stay apart.
        assert_ne!(PluginScope::new("a/b", "m").key("c"), PluginScope::new("a", "m").key("b/c"));
    }

    #[test]
    fn metrics_carry_the_plugin_unless_it_is_named_like_its_module() {
        assert_eq!(PluginScope::new("metrics", "metrics").metric("gateway_requests_total"), "gateway_requests_total");
        assert_eq!(PluginScope::new("", "metrics").metric("gateway_requests_total"), "gateway_requests_total");
        assert_eq!(
            PluginScope::new("metrics-internal", "metrics").metric("gateway_requests_total.route.r"),
            "gateway_requests_total.route.r.plugin.metrics-internal"
        );
        assert_eq!(PluginScope::new("a.b c", "metrics").metric("m"), "m.plugin.a_b_c");
    }
}
