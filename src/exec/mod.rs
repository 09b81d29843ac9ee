//! Forward pass of a [`Graph`]: batched NCHW feature maps, vectors `[N, F]` and token
//! sequences `[N, T, D]` (token ids `[N, T]`, carried as floats, T up to the declared
//! length), in f32 or f64, BN in eval or train mode.
//!
//! [`Executor::new`] converts the weights once to the run's precision; [`Executor::forward`]
//! frees every intermediate value as soon as its last consumer ran, lets element-wise ops
//! reuse that buffer, and fuses conv -> eval-mode BN -> ReLU (in the conv's per-image
//! epilogue) and BN/add -> ReLU, with the same arithmetic as the separate ops (tested bit
//! for bit). [`Executor::forward_all`] fuses nothing and keeps every node's value for the
//! proofs. Semantics follow PyTorch op by op (see each file).

mod act;
mod attention;
mod concat;
mod conv;
mod dense_nt;
mod direct_conv;
mod embed;
mod fastmath;
mod float;
mod gemm64;
mod linear;
mod norm;
mod pool;
mod shape;
mod stepper;
#[cfg(test)]
mod testutil;
mod tnorm;
mod winograd;
mod winograd64;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use ndarray::{ArrayD, Axis, IxDyn, Slice};
use rayon::prelude::*;

pub use act::{erf, gelu, gelu_tanh, silu};
pub use attention::rope_tables;
use conv::Epilogue;
pub use embed::check_tokens;
pub use float::{gemm, Float, GemmDims};
pub use norm::BnParams;
pub use stepper::Stepper;

use crate::error::{Error, Result};
use crate::ir::{show_shape, Activation, Graph, NodeIndex, NormKind, Op, Shape};
use crate::params::Params;

/// `n` seeded inputs shaped `[n, ...graph input shape]`: standard-normal values, or for a
/// token input (`input T tokens, vocab V`) sequences of T token ids drawn uniformly from
/// `0..V` (as floats, the executor's form of token ids).
pub fn random_input(graph: &Graph, n: usize, seed: u64) -> ArrayD<f64> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut shape = vec![n];
    shape.extend_from_slice(graph.input_shape());
    let len: usize = shape.iter().product();
    let v = match graph.defaults.vocab {
        Some(vocab) => (0..len)
            .map(|_| rng.random_range(0..vocab.max(1)) as f64)
            .collect(),
        None => (0..len).map(|_| crate::params::normal(&mut rng)).collect(),
    };
    ArrayD::from_shape_vec(IxDyn(&shape), v).expect("length matches shape")
}

/// Which statistics batch norm uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Running statistics from the weights (inference).
    Eval,
    /// Statistics of the batch itself, biased variance (training forward pass); the
    /// running statistics are not updated.
    Train,
}

/// `parse` (with an error naming the option and its keywords) and `name` for an enum of
/// keyword options, from one `(keyword, value)` table.
macro_rules! keywords {
    ($ty:ty, $what:literal, [$(($k:literal, $v:expr)),+ $(,)?]) => {
        impl $ty {
            const KEYWORDS: &'static [(&'static str, $ty)] = &[$(($k, $v)),+];

            pub fn parse(s: &str) -> $crate::error::Result<$ty> {
                $crate::exec::parse_keyword(s, $what, Self::KEYWORDS)
            }

            pub fn name(self) -> &'static str {
                $crate::exec::keyword_of(self, Self::KEYWORDS)
            }
        }
    };
}
pub(crate) use keywords;

keywords!(Mode, "mode", [("eval", Mode::Eval), ("train", Mode::Train)]);

/// The value whose keyword is `s` in `table`, or an error naming the option (`what`) and
/// the keywords it takes.
pub fn parse_keyword<K: Copy>(s: &str, what: &str, table: &[(&'static str, K)]) -> Result<K> {
    match table.iter().find(|(k, _)| *k == s) {
        Some(&(_, v)) => Ok(v),
        None => {
            let names: Vec<&str> = table.iter().map(|(k, _)| *k).collect();
            Err(Error::usage(
                format!("unknown {what} `{s}`"),
                Some(format!("use {}", names.join(" or "))),
            ))
        }
    }
}

/// The keyword of `v` in `table` (every value has one).
pub fn keyword_of<K: Copy + PartialEq>(v: K, table: &[(&'static str, K)]) -> &'static str {
    table
        .iter()
        .find(|(_, x)| *x == v)
        .map(|(k, _)| *k)
        .expect("every value has a keyword")
}

/// A dense row-major tensor whose first dimension is the batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor<T> {
    pub shape: Vec<usize>,
    pub data: Vec<T>,
}

impl<T: Float> Tensor<T> {
    pub fn from_array(a: ArrayD<T>) -> Tensor<T> {
        let shape = a.shape().to_vec();
        let data = if a.is_standard_layout() {
            let (v, offset) = a.into_raw_vec_and_offset();
            if offset.unwrap_or(0) == 0 && v.len() == shape.iter().product::<usize>() {
                v
            } else {
                // A view into a larger buffer: copy it out in logical order.
                let a = ArrayD::from_shape_vec(IxDyn(&[v.len()]), v).expect("1-d");
                let off = offset.unwrap_or(0);
                a.iter()
                    .skip(off)
                    .take(shape.iter().product())
                    .copied()
                    .collect()
            }
        } else {
            a.iter().copied().collect()
        };
        Tensor { shape, data }
    }

    pub fn into_array(self) -> ArrayD<T> {
        ArrayD::from_shape_vec(IxDyn(&self.shape), self.data).expect("shape matches data")
    }

    /// `[N, C, H, W]` of a feature map.
    pub fn dims4(&self) -> [usize; 4] {
        match self.shape.as_slice() {
            [n, c, h, w] => [*n, *c, *h, *w],
            s => panic!("expected a 4-d tensor, got {s:?}"),
        }
    }
}

/// How convolutions split their work: 0 automatic, 1 over images, 2 inside the GEMM.
static CONV_PARALLELISM: AtomicU8 = AtomicU8::new(0);

/// Chooses how convolutions use threads: `Some(true)` runs images (or groups of small
/// images) in parallel, one single-threaded GEMM each; `Some(false)` runs them in turn
/// and gives each GEMM the whole pool; `None` (the default) runs in parallel when there
/// are at least as many tasks as rayon threads (nested threading measured slower).
pub fn set_image_parallel(choice: Option<bool>) {
    let v = match choice {
        None => 0,
        Some(true) => 1,
        Some(false) => 2,
    };
    CONV_PARALLELISM.store(v, Ordering::Relaxed);
}

fn parallel_images(batch: usize) -> bool {
    match CONV_PARALLELISM.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => batch >= rayon::current_num_threads().max(2),
    }
}

/// A parameter tensor in `T`, converted on every core for big tensors (a fresh vector's
/// pages are faulted in as it fills, which one core alone waits for).
fn convert<T: Float>(a: &ArrayD<f64>) -> Vec<T> {
    match a.as_slice() {
        Some(v) if v.len() >= 1 << 16 => v
            .par_iter()
            .with_min_len(1 << 14)
            .map(|&x| T::from_f64(x))
            .collect(),
        _ => a.iter().map(|&x| T::from_f64(x)).collect(),
    }
}

/// The most bytes of one chunk's largest value in [`Executor::forward`]'s chunked runs.
/// Measured on ResNetCifar-18 (1/8, batch 128, 2 threads, best of 40): chunks of 64 KB
/// 4.47 ms, 256 KB 3.87 ms, 1 MB (one chunk per thread) 3.62 ms, against 4.2 ms layer by
/// layer: the gain is mostly the threads no longer meeting after every layer.
const CHUNK_BYTES: usize = 1 << 20;

/// Whether f32 eval mode computes node `n` image by image in r2rc's own loops.
fn per_image(graph: &Graph, n: NodeIndex) -> bool {
    match &graph.g[n].op {
        Op::Input
        | Op::BatchNorm(_)
        | Op::Activation(_)
        | Op::MaxPool(_)
        | Op::AvgPool(_)
        | Op::GlobalAvgPool
        | Op::Flatten
        | Op::Add
        | Op::ShortcutPad(_)
        | Op::Concat => true,
        Op::Conv2d(c) => match graph.inputs(n).first().map(|&i| &graph.g[i].shape[..]) {
            Some(&[_, h, w]) => conv::takes_direct_kernel(c, h, w),
            _ => false,
        },
        _ => false,
    }
}

/// One pass of the values that chunks of a batch left to be read, joined along the
/// batch axis in chunk order (every chunk ran the same steps).
fn join_passes<T: Float>(passes: Vec<Pass<T>>) -> Pass<T> {
    let mut passes = passes.into_iter();
    let mut first = passes.next().expect("a batch has a chunk");
    let rest: Vec<Pass<T>> = passes.collect();
    for (i, v) in first.vals.iter_mut().enumerate() {
        let Some(head) = v.take() else {
            continue;
        };
        let mut t = own(head);
        for p in &rest {
            let part = p.vals[i]
                .as_ref()
                .expect("every chunk keeps the same values");
            t.data.extend_from_slice(&part.data);
            t.shape[0] += part.shape[0];
        }
        *v = Some(Arc::new(t));
    }
    first
}

/// A node's weights in the run's precision.
enum Weights<T> {
    None,
    /// A weight and maybe a bias (convs, linears, norms, tables); shared, so that a tied
    /// head reads the token embedding's table without a copy.
    Dense {
        w: Arc<Vec<T>>,
        b: Option<Vec<T>>,
    },
    Bn(BnParams<T>),
    Prelu(Vec<T>),
}

struct Step<T> {
    node: NodeIndex,
    name: String,
    op: Op,
    /// Positions (in `steps`) of the inputs, in port order.
    inputs: Vec<usize>,
    /// How many input edges read this step's value.
    uses: usize,
    /// The ReLU step that is this step's only reader, when it can run in the same pass
    /// (batch norm or add followed by ReLU); used by `forward`, never by `forward_all`.
    fused_relu: Option<usize>,
    /// For a conv whose only reader is a batch norm: in eval-mode `forward`, that BN (and
    /// the ReLU fused into it) run in the conv's epilogue. Holds the steps absorbed.
    fused_bn: Option<(Vec<usize>, Epilogue<T>)>,
    weights: Weights<T>,
    /// A conv's Winograd filters, made by its first f32 `forward`.
    winograd: winograd::Cache,
    /// The same for F(2x2, 3x3), made by its first f64 run.
    winograd64: winograd64::Cache,
    /// A linear layer's weight packed for the f32 kernel, made by its first f32 run.
    packed: dense_nt::Packed,
}

/// One node's value from [`Executor::forward_all`].
#[derive(Debug, Clone)]
pub struct Value<T> {
    pub node: NodeIndex,
    pub name: String,
    /// `[N, ...node shape]`.
    pub data: ArrayD<T>,
}

/// A graph with its weights, ready to run in precision `T`.
pub struct Executor<T> {
    steps: Vec<Step<T>>,
    input: usize,
    output: usize,
    input_shape: Shape,
    /// The vocabulary of a token input (`input T tokens, vocab V`).
    vocab: Option<usize>,
    /// The most elements of any value for one image.
    largest_image_value: usize,
    /// The steps before this one compute each image alone in r2rc's own loops (the
    /// direct conv kernel, norms, activations, pools), so they may run chunk by chunk.
    chunk_until: usize,
}

impl<T: Float> Executor<T> {
    /// Checks `params` against `graph` and converts them to `T` once.
    pub fn new(graph: &Graph, params: &Params) -> Result<Executor<T>> {
        Self::build(graph, params, None)
    }

    /// As [`Executor::new`], but a weight table bit-identical to `teacher`'s of the same
    /// name (with `tp` the teacher's parameters) is shared, not converted again: a proof's
    /// student keeps most of its teacher's weights, and copying ResNet-50's in f64 cost a
    /// tenth of the proof (200 MB, each page faulted in).
    pub fn sharing(
        graph: &Graph,
        params: &Params,
        teacher: &Executor<T>,
        tp: &Params,
    ) -> Result<Executor<T>> {
        Self::build(graph, params, Some((teacher, tp)))
    }

    fn build(
        graph: &Graph,
        params: &Params,
        teacher: Option<(&Executor<T>, &Params)>,
    ) -> Result<Executor<T>> {
        params.check_covers(graph)?;
        let order = graph.order();
        let position: std::collections::HashMap<NodeIndex, usize> =
            order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let conv = |name: &str, suffix: &str| -> Vec<T> {
            convert(&params.tensors[&format!("{name}.{suffix}")])
        };
        let mut tables: std::collections::HashMap<String, Arc<Vec<T>>> = match teacher {
            Some((te, tp)) => te.shared_tables(tp, params),
            None => Default::default(),
        };
        let mut table = |name: &str| -> Arc<Vec<T>> {
            tables
                .entry(name.to_string())
                .or_insert_with(|| Arc::new(conv(name, "weight")))
                .clone()
        };
        let embedding = graph.embedding().map(|e| graph.g[e].name.clone());
        let mut steps: Vec<Step<T>> = Vec::with_capacity(order.len());
        for &n in &order {
            let node = &graph.g[n];
            let inputs: Vec<usize> = graph.inputs(n).iter().map(|i| position[i]).collect();
            let name = node.name.as_str();
            let weights = match &node.op {
                Op::Conv2d(c) => Weights::Dense {
                    w: table(name),
                    b: c.bias.then(|| conv(name, "bias")),
                },
                Op::Linear(l) => Weights::Dense {
                    w: table(name),
                    b: l.bias.then(|| conv(name, "bias")),
                },
                Op::Norm(nm) => Weights::Dense {
                    w: table(name),
                    b: (nm.bias && nm.kind == NormKind::Layer).then(|| conv(name, "bias")),
                },
                Op::Embedding(_) | Op::Positions(_) | Op::ClassToken(_) => Weights::Dense {
                    w: table(name),
                    b: None,
                },
                Op::TiedLinear(_) => {
                    let Some(e) = &embedding else {
                        return Err(Error::usage(
                            format!("the tied head `{name}` has no token embedding to share"),
                            None,
                        ));
                    };
                    Weights::Dense {
                        w: table(e),
                        b: None,
                    }
                }
                Op::BatchNorm(b) => Weights::Bn(BnParams {
                    gamma: conv(name, "weight"),
                    beta: conv(name, "bias"),
                    mean: conv(name, "running_mean"),
                    var: conv(name, "running_var"),
                    eps: b.eps,
                }),
                Op::Activation(Activation::Prelu { .. }) => Weights::Prelu(conv(name, "weight")),
                _ => Weights::None,
            };
            steps.push(Step {
                node: n,
                name: node.name.clone(),
                op: node.op.clone(),
                inputs,
                uses: 0,
                fused_relu: None,
                fused_bn: None,
                weights,
                winograd: Default::default(),
                winograd64: Default::default(),
                packed: Default::default(),
            });
        }
        for i in 0..steps.len() {
            for j in steps[i].inputs.clone() {
                steps[j].uses += 1;
            }
        }
        let output = position[&graph.output];
        for i in 0..steps.len() {
            let readers: Vec<usize> = (0..steps.len())
                .filter(|&j| steps[j].inputs.contains(&i))
                .collect();
            let fusable = matches!(steps[i].op, Op::BatchNorm(_) | Op::Add);
            if let [j] = readers[..] {
                if fusable
                    && i != output
                    && steps[i].uses == 1
                    && steps[j].op == Op::Activation(Activation::Relu)
                {
                    steps[i].fused_relu = Some(j);
                }
            }
        }
        for i in 0..steps.len() {
            if i == output || steps[i].uses != 1 || !matches!(steps[i].op, Op::Conv2d(_)) {
                continue;
            }
            let Some(j) = (0..steps.len()).find(|&j| steps[j].inputs.contains(&i)) else {
                continue;
            };
            if let Weights::Bn(bn) = &steps[j].weights {
                let (scale, shift) = norm::eval_affine(bn);
                let relu = steps[j].fused_relu;
                let mut absorbed = vec![j];
                absorbed.extend(relu);
                let e = Epilogue {
                    scale,
                    shift,
                    relu: relu.is_some(),
                };
                steps[i].fused_bn = Some((absorbed, e));
            }
        }
        Ok(Executor {
            steps,
            input: position[&graph.input],
            output,
            input_shape: graph.input_shape().clone(),
            vocab: graph.defaults.vocab,
            chunk_until: order
                .iter()
                .position(|&n| !per_image(graph, n))
                .unwrap_or(order.len()),
            largest_image_value: order
                .iter()
                .map(|&n| graph.g[n].shape.iter().product::<usize>())
                .max()
                .unwrap_or(0),
        })
    }

    /// This executor's weight tables (by layer name) whose tensors in `params` are
    /// bit-identical to those in `own`, the parameters it was built from.
    fn shared_tables(
        &self,
        own: &Params,
        params: &Params,
    ) -> std::collections::HashMap<String, Arc<Vec<T>>> {
        self.steps
            .iter()
            .filter_map(|s| match &s.weights {
                Weights::Dense { w, .. } => {
                    let key = format!("{}.weight", s.name);
                    let same = match (own.tensors.get(&key), params.tensors.get(&key)) {
                        (Some(a), Some(b)) => crate::params::same_bits(a, b),
                        _ => false,
                    };
                    same.then(|| (s.name.clone(), w.clone()))
                }
                _ => None,
            })
            .collect()
    }

    /// The network's output for a batch `[N, ...input shape]`.
    ///
    /// An f32 eval-mode batch of small images runs its first layers in chunks of a few
    /// images (see [`Executor::images_per_chunk`]).
    pub fn forward(&self, input: ArrayD<T>, mode: Mode) -> Result<ArrayD<T>> {
        let n = input.shape().first().copied().unwrap_or(0);
        let Some(per) = self.images_per_chunk(n, mode) else {
            let mut vals = self.run(Tensor::from_array(input), mode, false)?;
            let out = vals[self.output].take().expect("the output was computed");
            return Ok(own(out).into_array());
        };
        self.check_images(input.shape())?;
        // Each chunk through the steps before `chunk_until` on one thread, then the
        // values still to be read, joined in image order, through the rest.
        let passes = (0..n)
            .step_by(per)
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|i0| {
                let x = input.slice_axis(Axis(0), Slice::from(i0..(i0 + per).min(n)));
                let mut pass = self.start(Tensor::from_array(x.to_owned()));
                self.advance(&mut pass, self.chunk_until, mode, false)?;
                Ok(pass)
            })
            .collect::<Result<Vec<_>>>()?;
        let mut pass = join_passes(passes);
        self.advance(&mut pass, self.steps.len(), mode, false)?;
        let out = pass.vals[self.output]
            .take()
            .expect("the output was computed");
        Ok(own(out).into_array())
    }

    /// Images per chunk when a batch of `n` runs its first layers chunk by chunk, else
    /// `None`.
    ///
    /// Layer by layer, ResNetCifar-18 at width 1/8 and batch 128 wakes the threads and
    /// waits for the slowest after each of its 20 layers (about 0.2 ms each); a chunk of
    /// images runs those layers on one thread. Only in f32 (f64 runs keep their
    /// arithmetic), in eval mode (train-mode batch norm couples the images), and up to
    /// the first layer that is not computed image by image by r2rc's own loops
    /// (`chunk_until`: a linear layer's GEMM, a conv that would take the GEMM or
    /// Winograd), so the bits are those of the whole batch. The chunk size follows the
    /// shapes, not the thread count; chunks run only with at most that many threads, so
    /// that the whole batch and each chunk take the same direct conv kernel.
    pub fn images_per_chunk(&self, n: usize, mode: Mode) -> Option<usize> {
        let threads = rayon::current_num_threads();
        if T::NAME != "f32" || mode != Mode::Eval || self.vocab.is_some() || threads < 2 {
            return None;
        }
        let bytes = self.largest_image_value * std::mem::size_of::<T>();
        let most = CHUNK_BYTES / bytes.max(1);
        // As many chunks for each thread, each as large as the caches allow.
        let chunks = threads * n.div_ceil(threads * most.max(1));
        let per = n.div_ceil(chunks);
        let fits = bytes <= CHUNK_BYTES / 4;
        (fits && self.chunk_until > 1 && chunks > 1 && threads <= per && parallel_images(per))
            .then_some(per)
    }

    /// Every node's value, in the graph's topological order (the input first).
    pub fn forward_all(&self, input: ArrayD<T>, mode: Mode) -> Result<Vec<Value<T>>> {
        let vals = self.run(Tensor::from_array(input), mode, true)?;
        Ok(self
            .steps
            .iter()
            .zip(vals)
            .filter_map(|(s, v)| {
                v.map(|v| Value {
                    node: s.node,
                    name: s.name.clone(),
                    data: own(v).into_array(),
                })
            })
            .collect())
    }

    /// A batch of the input's shape; for token ids, `N x T` with `1 <= T <=` the declared
    /// length and every id in the vocabulary.
    fn check_input(&self, input: &Tensor<T>) -> Result<()> {
        let s = &input.shape;
        let Some(vocab) = self.vocab else {
            return self.check_images(s);
        };
        let longest = self.input_shape[0];
        match s[..] {
            [n, t] if n >= 1 && t >= 1 && t <= longest => {}
            [_, t] if t > longest => {
                return Err(Error::usage(
                    format!("the input's sequences have {t} tokens but the network takes at most {longest}"),
                    Some(format!("shorten them to {longest} tokens or declare a longer input (`input T tokens`)")),
                ))
            }
            _ => {
                return Err(Error::usage(
                    format!(
                        "the input has shape {} but the network takes token ids N x T (N >= 1, 1 <= T <= {longest})",
                        show_shape(s)
                    ),
                    Some("the first dimension is the batch, the second the tokens".into()),
                ))
            }
        }
        embed::check_tokens(input, vocab).map_err(|m| {
            Error::usage(
                format!("in the input, {m}"),
                Some("token ids must come from the tokenizer of this network's vocabulary".into()),
            )
        })
    }

    /// An image batch's shape: `N x` the input shape, `N >= 1`.
    fn check_images(&self, s: &[usize]) -> Result<()> {
        if s.len() != self.input_shape.len() + 1 || s[1..] != self.input_shape[..] || s[0] == 0 {
            return Err(Error::usage(
                format!(
                    "the input has shape {} but the network takes N x {} (N >= 1)",
                    show_shape(&s.to_vec()),
                    show_shape(&self.input_shape)
                ),
                Some("the first dimension is the batch; check the image size and channels".into()),
            ));
        }
        Ok(())
    }

    fn run(
        &self,
        input: Tensor<T>,
        mode: Mode,
        keep_all: bool,
    ) -> Result<Vec<Option<Arc<Tensor<T>>>>> {
        self.check_input(&input)?;
        let mut pass = self.start(input);
        self.advance(&mut pass, self.steps.len(), mode, keep_all)?;
        Ok(pass.vals)
    }

    fn start(&self, input: Tensor<T>) -> Pass<T> {
        let mut vals: Vec<Option<Arc<Tensor<T>>>> = vec![None; self.steps.len()];
        vals[self.input] = Some(Arc::new(input));
        Pass {
            vals,
            left: self.steps.iter().map(|s| s.uses).collect(),
            done: vec![false; self.steps.len()],
            next: 0,
        }
    }

    /// Runs the pass's steps up to (not including) step `until`.
    fn advance(&self, pass: &mut Pass<T>, until: usize, mode: Mode, keep_all: bool) -> Result<()> {
        let Pass {
            vals, left, done, ..
        } = pass;
        for i in pass.next..until {
            let step = &self.steps[i];
            if i == self.input || done[i] {
                continue;
            }
            let fused = step.fused_relu.filter(|_| !keep_all);
            let fused_bn = step
                .fused_bn
                .as_ref()
                .filter(|_| !keep_all && mode == Mode::Eval);
            let mut args = Vec::with_capacity(step.inputs.len());
            for &j in &step.inputs {
                left[j] -= 1;
                let last = left[j] == 0 && !keep_all && j != self.output;
                let v = if last {
                    vals[j].take()
                } else {
                    vals[j].clone()
                };
                args.push(v.expect("inputs run before their consumers"));
            }
            let fast = !keep_all;
            let out = eval(
                step,
                args,
                mode,
                fused.is_some(),
                fused_bn.map(|f| &f.1),
                fast,
            )
            .map_err(|m| Error::usage(format!("layer `{}`: {m}", step.name), None))?;
            if let Some((absorbed, _)) = fused_bn {
                // The BN (and its ReLU) ran in the conv's epilogue.
                absorbed.iter().for_each(|&j| done[j] = true);
                let last = *absorbed.last().expect("at least the BN");
                if self.steps[last].uses > 0 || last == self.output {
                    vals[last] = Some(Arc::new(out));
                }
            } else if let Some(j) = fused {
                // The ReLU ran in the same pass: its value is ready, this one is gone.
                done[j] = true;
                vals[j] = Some(Arc::new(out));
            } else if step.uses > 0 || keep_all || i == self.output {
                vals[i] = Some(Arc::new(out));
            }
        }
        pass.next = pass.next.max(until);
        Ok(())
    }
}

/// A forward pass under way: the values not yet read for the last time, how many reads
/// each has left, the steps already run (fused into another), and the next step.
struct Pass<T> {
    vals: Vec<Option<Arc<Tensor<T>>>>,
    left: Vec<usize>,
    done: Vec<bool>,
    next: usize,
}

/// The tensor itself when nobody else holds it, else a copy.
fn own<T: Float>(a: Arc<Tensor<T>>) -> Tensor<T> {
    Arc::try_unwrap(a).unwrap_or_else(|a| (*a).clone())
}

fn eval<T: Float>(
    step: &Step<T>,
    mut args: Vec<Arc<Tensor<T>>>,
    mode: Mode,
    relu: bool,
    epilogue: Option<&Epilogue<T>>,
    fast: bool,
) -> std::result::Result<Tensor<T>, String> {
    let dense = || match &step.weights {
        Weights::Dense { w, b } => (w.as_slice(), b.as_deref()),
        _ => unreachable!("convs, linears, norms and tables carry dense weights"),
    };
    Ok(match &step.op {
        Op::Input => unreachable!("the input is placed before the loop"),
        Op::Conv2d(c) => {
            let (w, b) = dense();
            // f64 runs take Winograd F(2x2, 3x3) in every pass (its rounding is a few ulps).
            if fast || T::as_f64(w).is_some() {
                let cache = (&step.winograd, &step.winograd64);
                conv::conv2d_fast(&args[0], c, w, b, epilogue, cache)
            } else {
                conv::conv2d(&args[0], c, w, b, epilogue)
            }
        }
        Op::Linear(l) => {
            let (w, b) = dense();
            linear::linear(&args[0], l.out_features, w, b, &step.packed)
        }
        Op::TiedLinear(l) => linear::linear(&args[0], l.vocab, dense().0, None, &step.packed),
        Op::Embedding(e) => embed::embedding(&args[0], dense().0, e.dim)?,
        Op::Positions(_) => embed::add_positions(own(args.remove(0)), dense().0)?,
        Op::ClassToken(_) => embed::class_token(&args[0], dense().0),
        Op::ToTokens => embed::to_tokens(&args[0]),
        Op::ClassPool => embed::token_pool(&args[0], 0),
        Op::Norm(nm) => {
            let (w, b) = dense();
            let x = own(args.remove(0));
            match nm.kind {
                NormKind::Layer => tnorm::layer_norm(x, w, b, nm.eps),
                NormKind::Rms => tnorm::rms_norm(x, w, nm.eps),
            }
        }
        Op::Attention(a) => {
            let heads = attention::Heads {
                heads: a.heads,
                kv_heads: a.kv_heads,
                head_dim: a.head_dim,
                causal: a.causal,
                rope: a.rope,
            };
            let v = args.pop().expect("v");
            let k = own(args.pop().expect("k"));
            let q = own(args.pop().expect("q"));
            attention::attention(q, k, &v, &heads)?
        }
        Op::Mul => {
            let first = own(args.remove(0));
            shape::mul(first, &args[0])
        }
        Op::BatchNorm(_) => {
            let Weights::Bn(bn) = &step.weights else {
                unreachable!("batch norms carry BN weights")
            };
            let x = own(args.remove(0));
            match mode {
                Mode::Eval => norm::batch_norm_eval(x, bn, relu),
                Mode::Train => norm::batch_norm_train(x, bn, relu)?,
            }
        }
        Op::Activation(a) => {
            let slopes = match &step.weights {
                Weights::Prelu(s) => Some(s.as_slice()),
                _ => None,
            };
            act::activation(own(args.remove(0)), a, slopes)
        }
        Op::MaxPool(p) => pool::pool2d(&args[0], p, true),
        Op::AvgPool(p) => pool::pool2d(&args[0], p, false),
        Op::GlobalAvgPool => pool::global_avg_pool(&args[0]),
        Op::Flatten => shape::flatten(own(args.remove(0))),
        Op::Softmax => act::softmax(own(args.remove(0))),
        Op::Add => {
            let first = own(args.remove(0));
            let rest: Vec<&Tensor<T>> = args.iter().map(|a| a.as_ref()).collect();
            shape::add(first, &rest, relu)
        }
        Op::ShortcutPad(p) => shape::shortcut_pad(&args[0], p),
        Op::Concat => concat::concat(&args.iter().map(|a| a.as_ref()).collect::<Vec<_>>())?,
    })
}
