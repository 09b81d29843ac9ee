//! Widening a normalised stream (DESIGN.md "Norms are not channel-wise"): a transformer's
//! residual stream is read by layer or RMS norms, which mix every feature, so new features
//! must keep each norm's statistics. Which construction a method gets:
//!
//! | method   | new stream features                 | readers' new columns | norms               |
//! |----------|-------------------------------------|----------------------|---------------------|
//! | r2r      | held (0 under RMS, the mean under LN) | `V`, `-V` in pairs | eps, scale rescaled |
//! | netmorph | held                                | free                 | eps, scale rescaled |
//! | net2net  | whole copies (integer factors only) | divided by copies    | copied, eps kept    |
//! | random   | free (baseline, not preserving)     | free                 | defaults            |
//!
//! Holding new features at zero (RMS) or at the mean of the old ones (LN) keeps the mean;
//! the mean square (RMS) or variance (LN) over `C + E` features is `s = C / (C + E)` times
//! the old one, so every norm gets `eps * s` and old scales `gamma * sqrt(s)`. A held
//! feature normalises to zero, so readers may give it any columns.

use ndarray::{ArrayD, Axis};
use rand_chacha::ChaCha8Rng;

use super::fill::{append0, cat, cat_pair, fan_in, with_dim, Fill, FillCtx, Lazily};
use super::methods::net2net::Net2Net;
use super::methods::random::RandomPad;
use super::methods::Noise;
use super::Method;
use crate::analysis::Space;
use crate::error::{Error, Result};
use crate::ir::{NormKind, Op, ParamKind};

/// The value new features of a normalised stream are held at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// RMS norm: zero adds nothing to the sum of squares.
    Zero,
    /// Layer norm: the mean of the old features keeps the mean.
    Mean,
}

/// What readers put in their new columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readers {
    /// R2R: `V` for the first half of the new features, `-V` for the second.
    Pairs,
    /// NetMorph: free columns (they read held features, which normalise to zero).
    Free,
}

/// How a step widens a normalised space.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StreamRule {
    /// Held features; every norm's eps is multiplied by `eps_scale`.
    Held {
        hold: Hold,
        readers: Readers,
        eps_scale: f64,
    },
    /// Whole copies of every feature (Net2Net with an integer factor).
    Copies,
    /// Free new features, norms at defaults (the random baseline).
    Free,
}

impl StreamRule {
    /// Whether the rule rounds in a narrow dtype (rescaled scales, means, divisions).
    pub fn rounds(self) -> bool {
        !matches!(self, StreamRule::Free)
    }

    /// The note a report gives for widening normalised space `space` by `e`.
    pub fn note(self, space: &Space, e: usize) -> String {
        let kind = space.norm.map_or("", |k| k.keyword());
        let (c, to) = (space.width, space.width + e);
        match self {
            StreamRule::Held {
                hold, eps_scale, ..
            } => format!(
                "space `{}` is read by {kind} norms: its {e} new features are held at {} by every writer, so each norm's eps is multiplied by {c}/{to} ({eps_scale}) and its old scales by sqrt({c}/{to})",
                space.label,
                match hold {
                    Hold::Zero => "zero",
                    Hold::Mean => "the mean of the old features",
                }
            ),
            StreamRule::Copies => format!(
                "space `{}` is read by {kind} norms: every feature appears {} times ({c} to {to}), which keeps each norm's statistics",
                space.label,
                to / c
            ),
            StreamRule::Free => format!(
                "space `{}` is read by {kind} norms: the random baseline draws its new features, which changes the norms' statistics",
                space.label
            ),
        }
    }
}

/// The rule `method` uses on normalised space `space` widened by `e`, or why none is
/// exact.
pub fn rule(method: Method, space: &Space, e: usize) -> Result<StreamRule> {
    let kind = space.norm.expect("a normalised space");
    let (c, to) = (space.width, space.width + e);
    let held = |readers| StreamRule::Held {
        hold: match kind {
            NormKind::Rms => Hold::Zero,
            NormKind::Layer => Hold::Mean,
        },
        readers,
        eps_scale: c as f64 / to as f64,
    };
    match method {
        Method::R2r => Ok(held(Readers::Pairs)),
        Method::Netmorph => Ok(held(Readers::Free)),
        Method::Random => Ok(StreamRule::Free),
        Method::Net2net => {
            if space.tied {
                return Err(Error::usage(
                    format!(
                        "Net2WiderNet cannot widen space `{}` exactly: a head tied to the token embedding reads it, and the embedding's copied features would be counted once per copy in the logits",
                        space.label
                    ),
                    Some("use --method r2r or netmorph, which hold new features at a value the norms ignore".into()),
                ));
            }
            if !e.is_multiple_of(c) {
                return Err(Error::usage(
                    format!(
                        "Net2WiderNet cannot widen space `{}` from {c} to {to} features exactly: it is read by {} norms, and copying some features but not others changes their {}",
                        space.label,
                        kind.keyword(),
                        match kind {
                            NormKind::Rms => "mean square",
                            NormKind::Layer => "mean and variance",
                        }
                    ),
                    Some(format!(
                        "use a whole-number factor (--by 2 gives {}), or --method r2r or netmorph (new features held at {}), which are exact at any width",
                        2 * c,
                        match kind {
                            NormKind::Rms => "zero",
                            NormKind::Layer => "the mean",
                        }
                    )),
                ));
            }
            Ok(StreamRule::Copies)
        }
    }
}

/// Makes the header's eps the student's: the language gives every norm (batch, layer and
/// RMS) the header's one eps, so rescaled norms must all agree and no batch norm may keep
/// the old value.
pub fn header_eps(g: &mut crate::ir::Graph) -> Result<()> {
    let mut eps: Option<(f64, String)> = None;
    for n in g.order() {
        let node = &g.g[n];
        let this = match &node.op {
            Op::Norm(m) => m.eps,
            Op::BatchNorm(b) => b.eps,
            _ => continue,
        };
        match &eps {
            None => eps = Some((this, node.name.clone())),
            Some((e, first)) if *e != this => {
                return Err(Error::usage(
                    format!(
                        "widening would give norm `{first}` eps {e} and `{}` eps {this}, and an .arch file gives every norm the header's one eps",
                        node.name
                    ),
                    Some("widen every stream the norms read (--all), or the MLP and attention widths only".into()),
                ))
            }
            Some(_) => {}
        }
    }
    if let Some((e, _)) = eps {
        g.defaults.eps = e;
    }
    Ok(())
}

/// The fill of `rule` for a step of `ctx`.
/// Net2Net's noise passes through to its whole copies: cancelling noise lands on the
/// readers' columns of the norms' outputs, which are exact copies, so it stays exact.
pub fn fill(rule: StreamRule, ctx: FillCtx, noise: Option<Noise>) -> Box<dyn Fill> {
    match rule {
        StreamRule::Held {
            hold,
            readers,
            eps_scale,
        } => Box::new(Held {
            ctx,
            hold,
            readers,
            eps_scale,
        }),
        StreamRule::Copies => Box::new(Net2Net::whole_copies(ctx, noise)),
        StreamRule::Free => Box::new(RandomPad { ctx }),
    }
}

/// The held construction's fill.
struct Held {
    ctx: FillCtx,
    hold: Hold,
    readers: Readers,
    eps_scale: f64,
}

impl Held {
    /// `n` copies along `axis` of the mean of `t` over `axis` (or zeros).
    fn held(&self, t: &ArrayD<f64>, axis: usize, n: usize) -> ArrayD<f64> {
        match self.hold {
            Hold::Zero => ArrayD::zeros(with_dim(t, axis, n)),
            Hold::Mean => {
                let mean = t
                    .mean_axis(Axis(axis))
                    .expect("a writer has features")
                    .insert_axis(Axis(axis));
                let copies: Vec<_> = (0..n).map(|_| mean.view()).collect();
                ndarray::concatenate(Axis(axis), &copies).expect("equal shapes")
            }
        }
    }
}

impl Fill for Held {
    fn added(&self) -> usize {
        self.ctx.e
    }

    fn rows(&self, w: &ArrayD<f64>, per: usize, _rng: &mut ChaCha8Rng) -> ArrayD<f64> {
        self.held(w, 0, self.ctx.e * per)
    }

    fn bias(&self, b: &ArrayD<f64>, per: usize, _rng: &mut ChaCha8Rng) -> ArrayD<f64> {
        self.held(b, 0, self.ctx.e * per)
    }

    fn features(&self, t: &ArrayD<f64>, _rng: &mut ChaCha8Rng) -> ArrayD<f64> {
        self.held(t, t.ndim() - 1, self.ctx.e)
    }

    fn norm(&self, kind: ParamKind, t: &ArrayD<f64>, _rng: &mut ChaCha8Rng) -> ArrayD<f64> {
        if kind == ParamKind::BnWeight {
            // A held feature normalises to zero whatever its scale; the mean scale keeps
            // it trainable like the others.
            let old = t.mapv(|g| g * self.eps_scale.sqrt());
            let mean = old.mean().unwrap_or(1.0);
            append0(old, &ArrayD::from_elem(with_dim(t, 0, self.ctx.e), mean))
        } else {
            // Shifts of held features are zero, so they read as zero.
            append0(t.clone(), &ArrayD::zeros(with_dim(t, 0, self.ctx.e)))
        }
    }

    fn columns(&self, w: &ArrayD<f64>, cols: usize, rng: &mut ChaCha8Rng) -> ArrayD<f64> {
        let inputs = (self.ctx.c + self.ctx.e) * cols;
        match self.readers {
            Readers::Pairs => {
                let half = self.ctx.e / 2 * cols;
                let v = self
                    .ctx
                    .free(rng, &with_dim(w, 1, half), w, fan_in(w, inputs));
                cat_pair(w, &v)
            }
            Readers::Free => {
                let v = self.ctx.free(
                    rng,
                    &with_dim(w, 1, self.ctx.e * cols),
                    w,
                    fan_in(w, inputs),
                );
                cat(1, &[w, &v])
            }
        }
    }

    fn lazily(&self) -> Option<Lazily> {
        // Columns `[w, v, -v]` are R2WiderR's (same shapes, fan-in and draws).
        (self.hold == Hold::Zero && self.readers == Readers::Pairs)
            .then_some(Lazily::HeldZero(self.ctx))
    }
}
