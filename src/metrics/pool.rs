//! The per-preset pool gauges (desired, running, eligible, hard-limited) as one collector
//! whose figures the reconciler replaces whole, once per cycle: a scrape sees either the
//! previous cycle's complete set or the new one, never a family emptied and half refilled,
//! and presets that stopped being pooled simply are not in the next set.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Gauge, LabelPair, Metric, MetricFamily, MetricType};

const LABELS: [&str; 3] = ["organization_name", "template_name", "preset_name"];

/// (name, help) of each family, in the order of `PoolFigures::values`.
const FAMILIES: [(&str, &str); 4] = [
    (
        "workspaced_prebuilt_workspaces_desired",
        "Prebuilt workspaces a preset should have now (schedules applied).",
    ),
    (
        "workspaced_prebuilt_workspaces_running",
        "Running prebuilt workspaces of a preset, expired ones included.",
    ),
    (
        "workspaced_prebuilt_workspaces_eligible",
        "Ready, unexpired prebuilt workspaces a user can claim now.",
    ),
    (
        "workspaced_prebuilt_workspaces_preset_hard_limited",
        "1 while a preset is hard-limited (its newest prebuild builds all failed); needs `workspaced preset reset`.",
    ),
];

/// One pooled preset's figures in a cycle.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolFigures {
    /// organization, template, preset names.
    pub labels: [String; 3],
    pub desired: u64,
    pub running: u64,
    pub eligible: u64,
    pub hard_limited: bool,
}

impl PoolFigures {
    fn values(&self) -> [f64; 4] {
        [
            self.desired as f64,
            self.running as f64,
            self.eligible as f64,
            f64::from(u8::from(self.hard_limited)),
        ]
    }
}

#[derive(Clone)]
pub struct PoolGauges {
    descs: Arc<Vec<Desc>>,
    current: Arc<Mutex<Arc<Vec<MetricFamily>>>>,
}

impl PoolGauges {
    pub fn new() -> prometheus::Result<PoolGauges> {
        let descs = FAMILIES
            .iter()
            .map(|(name, help)| {
                Desc::new(
                    (*name).to_owned(),
                    (*help).to_owned(),
                    LABELS.iter().map(|label| (*label).to_owned()).collect(),
                    HashMap::new(),
                )
            })
            .collect::<prometheus::Result<Vec<_>>>()?;
        Ok(PoolGauges {
            descs: Arc::new(descs),
            current: Arc::new(Mutex::new(Arc::new(Vec::new()))),
        })
    }

    /// Replaces every series with `figures` (one cycle's complete set).
    pub fn publish(&self, figures: &[PoolFigures]) {
        let mut families: Vec<MetricFamily> = FAMILIES
            .iter()
            .map(|(name, help)| {
                let mut family = MetricFamily::default();
                family.set_name((*name).to_owned());
                family.set_help((*help).to_owned());
                family.set_field_type(MetricType::GAUGE);
                family
            })
            .collect();
        let mut sorted: Vec<&PoolFigures> = figures.iter().collect();
        // In the order of the label names (organization, preset, template), as a vector's.
        sorted.sort_by(|a, b| {
            (&a.labels[0], &a.labels[2], &a.labels[1]).cmp(&(
                &b.labels[0],
                &b.labels[2],
                &b.labels[1],
            ))
        });
        for preset in sorted {
            let labels: Vec<LabelPair> = LABELS
                .iter()
                .zip(&preset.labels)
                .map(|(name, value)| {
                    let mut pair = LabelPair::default();
                    pair.set_name((*name).to_owned());
                    pair.set_value(value.clone());
                    pair
                })
                .collect();
            let mut labels = labels;
            labels.sort_by(|a, b| a.name().cmp(b.name()));
            for (family, value) in families.iter_mut().zip(preset.values()) {
                let mut gauge = Gauge::default();
                gauge.set_value(value);
                let mut metric = Metric::from_label(labels.clone());
                metric.set_gauge(gauge);
                family.mut_metric().push(metric);
            }
        }
        // A family without series is left out, as an empty vector's would be.
        families.retain(|family| !family.get_metric().is_empty());
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(families);
    }
}

impl Collector for PoolGauges {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let current = Arc::clone(&self.current.lock().unwrap_or_else(PoisonError::into_inner));
        current.as_ref().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(preset: &str, desired: u64) -> PoolFigures {
        PoolFigures {
            labels: ["default".into(), "dev".into(), preset.into()],
            desired,
            running: 1,
            eligible: 1,
            hard_limited: false,
        }
    }

    #[test]
    fn a_cycle_replaces_the_whole_set() {
        let registry = prometheus::Registry::new();
        let gauges = PoolGauges::new().unwrap();
        registry.register(Box::new(gauges.clone())).unwrap();
        gauges.publish(&[figures("a", 2), figures("b", 3)]);
        let render = || {
            let mut buffer = Vec::new();
            prometheus::Encoder::encode(
                &prometheus::TextEncoder::new(),
                &registry.gather(),
                &mut buffer,
            )
            .unwrap();
            String::from_utf8(buffer).unwrap()
        };
        let text = render();
        assert!(text.contains(
            r#"workspaced_prebuilt_workspaces_desired{organization_name="default",preset_name="a",template_name="dev"} 2"#
        ), "{text}");
        assert!(text.contains(r#"preset_name="b",template_name="dev"} 3"#), "{text}");
        gauges.publish(&[figures("b", 4)]);
        let text = render();
        assert!(!text.contains(r#"preset_name="a""#), "{text}");
        assert!(text.contains(r#"preset_name="b",template_name="dev"} 4"#), "{text}");
        gauges.publish(&[]);
        assert!(!render().contains("workspaced_prebuilt_workspaces_desired"));
    }
}
