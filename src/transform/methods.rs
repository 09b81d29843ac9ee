//! The widening methods, one line each: what the pipeline needs to know of a method
//! besides its fill. Adding a method is its fill's file, a [`Method`] variant and a line in
//! [`METHODS`].

use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::fill::{Fill, FillCtx};
use super::{net2net, netmorph, r2r, random};
use crate::error::{Error, Result};

/// A widening method (DESIGN.md's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// R2WiderR: 2E new channels, rows U/U, columns V/-V.
    R2r,
    /// NetMorph: arbitrary rows, zero consumer columns.
    Netmorph,
    /// Net2WiderNet: replicas of existing channels, one map per space.
    Net2net,
    /// Random padding: He-initialised rows and columns; not function preserving.
    Random,
}

/// One widening method's facts.
pub struct MethodInfo {
    pub method: Method,
    /// What `--method` takes.
    pub name: &'static str,
    /// The paper's name, for reports.
    pub title: &'static str,
    /// Function preserving (without `--noise`).
    pub exact: bool,
    /// Adds channels in pairs (R2R's halves L and R).
    pub pairs: bool,
    /// Computes values a narrow dtype cannot hold exactly (replica divisions): the proof's
    /// tolerance rule widens for it ([`crate::prove::stored_options`]).
    pub rounds: bool,
    /// Takes `--noise` (then it is no longer exact).
    pub noisy: bool,
    /// The fill of one step; `step_rng` is the step's own keyed stream.
    pub fill: fn(FillCtx, Option<f64>, &mut ChaCha8Rng) -> Box<dyn Fill>,
}

#[rustfmt::skip]
pub const METHODS: [MethodInfo; 4] = [
    MethodInfo { method: Method::R2r, name: "r2r", title: "R2WiderR", exact: true, pairs: true, rounds: false, noisy: false, fill: |c, _, _| Box::new(r2r::R2r::new(c)) },
    MethodInfo { method: Method::Netmorph, name: "netmorph", title: "NetMorph", exact: true, pairs: false, rounds: false, noisy: false, fill: |c, _, _| Box::new(netmorph::NetMorph::new(c)) },
    MethodInfo { method: Method::Net2net, name: "net2net", title: "Net2WiderNet", exact: true, pairs: false, rounds: true, noisy: true, fill: |c, n, r| Box::new(net2net::Net2Net::new(c, n, r)) },
    MethodInfo { method: Method::Random, name: "random", title: "random padding", exact: false, pairs: false, rounds: false, noisy: false, fill: |c, _, _| Box::new(random::RandomPad::new(c)) },
];

impl Method {
    /// This method's line of [`METHODS`].
    pub fn info(self) -> &'static MethodInfo {
        METHODS
            .iter()
            .find(|m| m.method == self)
            .expect("every method has a line")
    }

    pub fn parse(s: &str) -> Result<Method> {
        match METHODS.iter().find(|m| m.name == s) {
            Some(m) => Ok(m.method),
            None => {
                let names: Vec<&str> = METHODS.iter().map(|m| m.name).collect();
                Err(Error::usage(
                    format!("unknown widening method `{s}`"),
                    Some(format!("use one of: {}", names.join(", "))),
                ))
            }
        }
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }

    pub fn title(self) -> &'static str {
        self.info().title
    }
}
