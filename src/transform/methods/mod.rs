//! The widening methods: one file each (its [`Fill`]), and one line each in [`METHODS`]
//! saying what the pipeline needs to know of it besides its fill. Adding a method is its
//! file here, its `mod` line, a [`Method`] variant and a line in [`METHODS`], all in this
//! folder.

pub mod net2net;
pub mod netmorph;
pub mod r2r;
pub mod random;

use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::fill::{Fill, FillCtx};
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
    /// Function preserving (without [`Noise::Approx`]).
    pub exact: bool,
    /// Adds channels in pairs (R2R's halves L and R).
    pub pairs: bool,
    /// Computes values a narrow dtype cannot hold exactly (replica divisions): the proof's
    /// tolerance rule widens for it ([`crate::prove::stored_options`]).
    pub rounds: bool,
    /// Duplicates channels and takes [`Noise`] to break the replicas' symmetry.
    pub noisy: bool,
    /// The fill of one step; `step_rng` is the step's own keyed stream.
    pub fill: fn(FillCtx, Option<Noise>, &mut ChaCha8Rng) -> Box<dyn Fill>,
}

/// Noise that breaks the symmetry of duplicated channels (Net2WiderNet's replicas), in
/// standard deviations of the tensor it lands on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Noise {
    /// `--noise`: zero-sum sets on the consumer columns of each channel's copies
    /// (HyperCloning): replicas' outgoing weights differ, their sum is unchanged, the
    /// student is exact.
    Cancelling(f64),
    /// `--noise-approx`: independent noise on the new rows and columns (the Net2Net paper's):
    /// the student is only approximately the teacher.
    Approx(f64),
}

impl Noise {
    /// Its standard deviations.
    pub fn sigma(self) -> f64 {
        match self {
            Noise::Cancelling(s) | Noise::Approx(s) => s,
        }
    }

    /// Whether it changes the function (approximate noise of a positive size).
    pub fn approximate(self) -> bool {
        matches!(self, Noise::Approx(s) if s > 0.0)
    }

    /// The flag that asks for it.
    pub fn flag(self) -> &'static str {
        match self {
            Noise::Cancelling(_) => "--noise",
            Noise::Approx(_) => "--noise-approx",
        }
    }

    /// Its name in titles and notes.
    pub fn title(self) -> String {
        match self {
            Noise::Cancelling(s) => format!("cancelling noise {s}"),
            Noise::Approx(s) => format!("approximate noise {s}"),
        }
    }

    /// A usage error unless SIGMA is a finite number >= 0.
    pub fn check(self) -> Result<()> {
        let s = self.sigma();
        if s.is_finite() && s >= 0.0 {
            return Ok(());
        }
        Err(Error::usage(
            format!("{} {s}: SIGMA must be a finite number >= 0", self.flag()),
            Some("e.g. 0.01 (standard deviations of the weight it lands on)".into()),
        ))
    }

    /// The report's sentence about it (`title`: the method's); none for SIGMA 0.
    pub fn note(self, title: &str) -> Option<String> {
        Some(match self {
            Noise::Cancelling(0.0) | Noise::Approx(0.0) => return None,
            Noise::Cancelling(s) => format!(
                "{title} breaks the replicas' symmetry with cancelling noise: the consumer columns of each channel's copies get noise of {s} standard deviations of the consumer weight in zero-sum sets (+N and -N for two copies), so replicas' outgoing weights differ while their sum, and the student's function, is unchanged: the student is exact"
            ),
            Noise::Approx(s) => format!(
                "{title} adds approximate noise of {s} standard deviations to the new rows and columns: the student is only approximately the teacher (measured, not proved)"
            ),
        })
    }
}

#[rustfmt::skip]
pub const METHODS: [MethodInfo; 4] = [
    MethodInfo { method: Method::R2r, name: "r2r", title: "R2WiderR", exact: true, pairs: true, rounds: false, noisy: false, fill: |c, _, _| Box::new(r2r::R2r::new(c)) },
    MethodInfo { method: Method::Netmorph, name: "netmorph", title: "NetMorph", exact: true, pairs: false, rounds: false, noisy: false, fill: |c, _, _| Box::new(netmorph::NetMorph { ctx: c }) },
    MethodInfo { method: Method::Net2net, name: "net2net", title: "Net2WiderNet", exact: true, pairs: false, rounds: true, noisy: true, fill: |c, n, r| Box::new(net2net::Net2Net::new(c, n, r)) },
    MethodInfo { method: Method::Random, name: "random", title: "random padding", exact: false, pairs: false, rounds: false, noisy: false, fill: |c, _, _| Box::new(random::RandomPad { ctx: c }) },
];

/// A line of a method table: the method it describes and the name `--method` takes.
pub trait TableLine: 'static {
    type Method: Copy + PartialEq;
    fn method(&self) -> Self::Method;
    fn name(&self) -> &'static str;
}

/// `method`'s line of `table`.
pub fn line_of<L: TableLine>(table: &'static [L], method: L::Method) -> &'static L {
    table
        .iter()
        .find(|l| l.method() == method)
        .expect("every method has a line")
}

/// The method of `table` that `--method s` names; `what` says which kind of method.
pub fn parse_method<L: TableLine>(table: &'static [L], s: &str, what: &str) -> Result<L::Method> {
    match table.iter().find(|l| l.name() == s) {
        Some(l) => Ok(l.method()),
        None => {
            let names: Vec<&str> = table.iter().map(|l| l.name()).collect();
            Err(Error::usage(
                format!("unknown {what} method `{s}`"),
                Some(format!("use one of: {}", names.join(", "))),
            ))
        }
    }
}

impl TableLine for MethodInfo {
    type Method = Method;
    fn method(&self) -> Method {
        self.method
    }
    fn name(&self) -> &'static str {
        self.name
    }
}

impl Method {
    /// This method's line of [`METHODS`].
    pub fn info(self) -> &'static MethodInfo {
        line_of(&METHODS, self)
    }

    pub fn parse(s: &str) -> Result<Method> {
        parse_method(&METHODS, s, "widening")
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }

    pub fn title(self) -> &'static str {
        self.info().title
    }
}
