//! Channel spaces (DESIGN.md "The theory the code implements").
//!
//! A channel-wise op (batch norm, element-wise activations, pooling, global pooling,
//! flatten) keeps channel c of its input in channel c of its output, and a residual `Add`
//! does so for all its inputs at once, so these values must be widened together: they form
//! one *space*. Widening a space touches its producers (convs and linears writing into it:
//! new output rows), its channel-wise parameters (batch norm, PReLU: new entries) and its
//! consumers (convs and linears reading it: new input columns, `cols` per channel, where a
//! flattened `C x H x W` value gives every channel `H*W` columns).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::ir::{Activation, Graph, NodeIndex, NormKind, Op};

/// A value of a space.
#[derive(Debug, Clone, Serialize)]
pub struct Member {
    #[serde(skip)]
    pub node: NodeIndex,
    pub name: String,
    pub op: String,
    /// Features per channel: 1 for feature maps and vectors, `H*W` after a flatten.
    pub cols: usize,
}

/// A layer named in a space, with its node.
#[derive(Debug, Clone, Serialize)]
pub struct Named {
    #[serde(skip)]
    pub node: NodeIndex,
    pub name: String,
    /// Output rows (features) per channel of the space: 1, except for the projections of
    /// attention, whose unit is a kv group (`group * head_dim` query rows, `head_dim` key
    /// and value rows).
    #[serde(skip)]
    pub per: usize,
}

/// A conv or linear reading a value of the space.
#[derive(Debug, Clone, Serialize)]
pub struct Consumer {
    #[serde(skip)]
    pub node: NodeIndex,
    pub name: String,
    /// The member it reads.
    pub reads: String,
    /// Input columns each channel of the space owns in this consumer.
    pub cols: usize,
}

/// One channel space.
#[derive(Debug, Clone, Serialize)]
pub struct Space {
    /// Position in [`Spaces::spaces`] (topological order of the first member).
    pub id: usize,
    /// The first member's name, used to show the space.
    pub label: String,
    /// Channels.
    pub width: usize,
    /// The rows the members were written in, in order (`conv1`, `conv2_x`).
    pub rows: Vec<String>,
    pub members: Vec<Member>,
    pub producers: Vec<Named>,
    /// Batch norms and PReLUs: one parameter entry per channel (times `cols`).
    pub params: Vec<Named>,
    pub consumers: Vec<Consumer>,
    /// Why the space cannot be widened; empty when it can.
    pub blockers: Vec<String>,
    /// The layer or RMS norms reading the space (a transformer's residual stream): new
    /// features must keep their statistics (DESIGN.md "Norms are not channel-wise").
    pub norm: Option<NormKind>,
    /// Whether a head tied to a token embedding of the space reads it (the embedding's
    /// weight is then both a writer and a reader of the space).
    pub tied: bool,
    /// What one unit of `width` is.
    pub unit: Unit,
    /// Equal groups its own channels split into: the least common multiple of the groups
    /// of the grouped convolutions writing or reading it (1 without any). Each group
    /// widens by the same number of channels, at its end.
    pub groups: usize,
    /// The grouped convolution that set `groups`, for messages.
    #[serde(skip)]
    pub grouped_by: Option<String>,
    /// Channels of its own: all of them, less those another space owns (the input
    /// channels an option-A shortcut keeps, the parts of a concatenation).
    pub own: usize,
    /// Its channels as runs, in order, each named by the space owning it: a plain space is
    /// `groups` runs of its own; a pad shortcut's output is its input's runs then its own
    /// (the zero channels); a concatenation is its inputs' runs. Widening space X inserts
    /// new channels at the end of every run of X, in every space holding one.
    pub layout: Vec<usize>,
    /// The pad shortcut or concatenation whose inputs' spaces lie in it, for messages.
    #[serde(skip)]
    pub derived_by: Option<String>,
}

/// What a space's width counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Channels of feature maps and vectors.
    Channels,
    /// Features of token sequences (the last axis).
    Features,
    /// Key-value groups of attention, each with its query heads.
    KvGroups,
    /// Positions of a token-id input (not features: the data fixes them).
    Tokens,
}

impl Unit {
    pub fn word(self) -> &'static str {
        match self {
            Unit::Channels => "channels",
            Unit::Features => "features",
            Unit::KvGroups => "kv groups",
            Unit::Tokens => "token positions",
        }
    }
}

impl Space {
    pub fn widenable(&self) -> bool {
        self.blockers.is_empty() && self.own > 0
    }

    /// Width of each of its own runs.
    pub fn run_width(&self) -> usize {
        self.own / self.groups.max(1)
    }

    pub fn member(&self, node: NodeIndex) -> Option<&Member> {
        self.members.iter().find(|m| m.node == node)
    }

    /// A one-line description, named by its first member as every message names spaces
    /// (the id is internal): "space `conv1` (8 channels, rows conv1, conv2_x)".
    pub fn describe(&self) -> String {
        format!(
            "space `{}` ({} {}, rows {})",
            self.label,
            self.width,
            self.unit.word(),
            self.rows.join(", ")
        )
    }
}

/// Every channel space of a graph, and which space each node's output lies in.
#[derive(Debug, Clone, Serialize)]
pub struct Spaces {
    pub spaces: Vec<Space>,
    #[serde(skip)]
    pub of: HashMap<NodeIndex, usize>,
}

impl Spaces {
    /// Why space `id` cannot be widened (empty when it can); a space made only of other
    /// spaces' channels names them, since widening one of them is what the user wants.
    pub fn why_fixed(&self, id: usize) -> Vec<String> {
        let s = &self.spaces[id];
        let mut v = s.blockers.clone();
        if s.own == 0 {
            let mut owners: Vec<&str> = Vec::new();
            for &o in &s.layout {
                let label = self.spaces[o].label.as_str();
                if !owners.contains(&label) {
                    owners.push(label);
                }
            }
            const SHOWN: usize = 4;
            let mut names: Vec<String> = owners
                .iter()
                .take(SHOWN)
                .map(|l| format!("`{l}`"))
                .collect();
            if owners.len() > SHOWN {
                names.push(format!("{} more", owners.len() - SHOWN));
            }
            v.push(format!(
                "all its channels belong to other spaces (through `{}`), which widen on their own: widen a layer writing one of them ({})",
                s.derived_by.as_deref().unwrap_or("?"),
                names.join(", ")
            ));
        }
        v
    }

    /// The space holding `node`'s output.
    pub fn space_of(&self, node: NodeIndex) -> &Space {
        &self.spaces[self.of[&node]]
    }
}

fn find(parent: &mut [usize], mut x: usize) -> usize {
    while parent[x] != x {
        parent[x] = parent[parent[x]];
        x = parent[x];
    }
    x
}

fn union(parent: &mut [usize], a: usize, b: usize) {
    let (ra, rb) = (find(parent, a), find(parent, b));
    if ra != rb {
        // The earlier node stays the root so roots follow the source order.
        let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
        parent[hi] = lo;
    }
}

/// Whether an op keeps channel c of its (every) input in channel c of its output.
fn channel_wise(op: &Op) -> bool {
    matches!(
        op,
        Op::BatchNorm(_)
            | Op::Activation(_)
            | Op::MaxPool(_)
            | Op::AvgPool(_)
            | Op::GlobalAvgPool
            | Op::Flatten
            | Op::Add
            // Softmax is joined so that its space is refused with the reason below.
            | Op::Softmax
            // Transformer ops that keep feature d in feature d (token positions aside).
            | Op::Mul
            | Op::Positions(_)
            | Op::ClassToken(_)
            | Op::ToTokens
            | Op::ClassPool
            // A norm is not channel-wise, but its output must be indexed like its input:
            // the space is normalised and widens by norm-aware rules.
            | Op::Norm(_)
            // Attention keeps head h in head h: a space whose unit is a kv group.
            | Op::Attention(_)
    )
}

/// Features of one value: the last axis of a token sequence `[T, D]`, else the first
/// (channels of a feature map, features of a vector).
fn features(shape: &[usize]) -> usize {
    match shape {
        [_, d] => *d,
        [c, ..] => *c,
        [] => 1,
    }
}

/// Whether a normalised stream may hold op `op`: the writers and readers whose new
/// features the norm-aware fills keep at zero or at the mean, sums, and ops that move
/// tokens. An activation or product would not keep those values.
fn keeps_held_features(op: &Op) -> bool {
    matches!(
        op,
        Op::Embedding(_)
            | Op::Positions(_)
            | Op::ClassToken(_)
            | Op::ToTokens
            | Op::Conv2d(_)
            | Op::Linear(_)
            | Op::Add
            | Op::Norm(_)
            | Op::ClassPool
    )
}

/// Groups the graph's values into channel spaces.
pub fn channel_spaces(graph: &Graph) -> Spaces {
    let order = graph.order();
    let pos: HashMap<NodeIndex, usize> = order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let mut parent: Vec<usize> = (0..order.len()).collect();
    for (i, &n) in order.iter().enumerate() {
        if channel_wise(&graph.g[n].op) {
            for src in graph.inputs(n) {
                union(&mut parent, i, pos[&src]);
            }
        }
    }
    // Columns per channel, in topological order (a flatten multiplies by H*W).
    let mut cols: Vec<usize> = vec![1; order.len()];
    for (i, &n) in order.iter().enumerate() {
        if let Op::Attention(a) = &graph.g[n].op {
            // One channel is a kv group: its query heads, or its key or value head.
            let q = a.heads / a.kv_heads * a.head_dim;
            cols[i] = q;
            for (port, src) in graph.inputs(n).into_iter().enumerate() {
                cols[pos[&src]] = if port == 0 { q } else { a.head_dim };
            }
            continue;
        }
        if !channel_wise(&graph.g[n].op) {
            continue;
        }
        if let Some(src) = graph.inputs(n).first() {
            let j = pos[src];
            cols[i] = cols[j];
            if matches!(graph.g[n].op, Op::Flatten) {
                cols[i] *= graph.g[*src].shape.iter().skip(1).product::<usize>();
            }
        }
    }
    // The norms of each space, and the layers a normalised stream cannot hold.
    let mut norms: BTreeMap<usize, Vec<(NormKind, String)>> = BTreeMap::new();
    let mut unheld: BTreeMap<usize, String> = BTreeMap::new();
    let mut root_to_space: HashMap<usize, usize> = HashMap::new();
    let mut spaces: Vec<Space> = Vec::new();
    let mut of = HashMap::new();
    for (i, &n) in order.iter().enumerate() {
        let root = find(&mut parent, i);
        let id = *root_to_space.entry(root).or_insert_with(|| {
            let node = &graph.g[n];
            spaces.push(Space {
                id: spaces.len(),
                label: node.name.clone(),
                width: features(&node.shape) / cols[i].max(1),
                rows: vec![],
                members: vec![],
                producers: vec![],
                params: vec![],
                consumers: vec![],
                blockers: vec![],
                norm: None,
                tied: false,
                groups: 1,
                grouped_by: None,
                own: 0,
                layout: vec![],
                derived_by: None,
                unit: if node.shape.len() == 2 {
                    Unit::Features
                } else if n == graph.input && graph.defaults.vocab.is_some() {
                    Unit::Tokens
                } else {
                    Unit::Channels
                },
            });
            spaces.len() - 1
        });
        of.insert(n, id);
        let node = &graph.g[n];
        let s = &mut spaces[id];
        if !s.rows.contains(&node.row) {
            s.rows.push(node.row.clone());
        }
        s.members.push(Member {
            node: n,
            name: node.name.clone(),
            op: node.op.kind_name().to_string(),
            cols: cols[i],
        });
        let named = Named {
            node: n,
            name: node.name.clone(),
            per: cols[i],
        };
        if !keeps_held_features(&node.op) {
            unheld.entry(id).or_insert_with(|| node.name.clone());
        }
        match &node.op {
            Op::Attention(_) => s.unit = Unit::KvGroups,
            Op::Input => s.blockers.push(format!(
                "it holds the network input `{}`, whose {} come from the data",
                node.name,
                s.unit.word()
            )),
            Op::Conv2d(c) => {
                s.group(c.groups, &node.name);
                s.producers.push(named);
            }
            Op::Linear(_) | Op::Embedding(_) | Op::Positions(_) | Op::ClassToken(_) => {
                s.producers.push(named)
            }
            Op::BatchNorm(_) | Op::Activation(Activation::Prelu { .. }) => s.params.push(named),
            Op::Norm(norm) => {
                norms
                    .entry(id)
                    .or_default()
                    .push((norm.kind, node.name.clone()));
                s.params.push(named);
            }
            Op::Softmax => s.blockers.push(format!(
                "softmax `{}` normalises across channels, which is not a channel-wise op: new channels would change the original outputs",
                node.name
            )),
            _ => {}
        }
        if n == graph.output {
            s.blockers.push(format!(
                "it holds the network output `{}`, whose width the task fixes",
                node.name
            ));
        }
    }
    // Consumers: convs, linears and pad shortcuts reading a member.
    for (i, &n) in order.iter().enumerate() {
        let id = of[&n];
        for c in graph.consumers(n) {
            let cnode = &graph.g[c];
            let s = &mut spaces[id];
            match &cnode.op {
                Op::Conv2d(conv) => s.group(conv.groups, &cnode.name),
                Op::Linear(_) => {}
                Op::TiedLinear(_) => s.tied = true,
                // A pad shortcut's output holds its input's channels: see `layouts`.
                _ => continue,
            }
            s.consumers.push(Consumer {
                node: c,
                name: cnode.name.clone(),
                reads: graph.g[n].name.clone(),
                cols: cols[i],
            });
        }
    }
    for (id, found) in norms {
        let s = &mut spaces[id];
        let kind = found[0].0;
        if let Some((other, name)) = found.iter().find(|(k, _)| *k != kind) {
            s.blockers.push(format!(
                "it is read by a {} norm (`{}`) and a {} norm (`{name}`), and no fill keeps the statistics of both",
                kind.keyword(),
                found[0].1,
                other.keyword()
            ));
        }
        if let Some(layer) = unheld.get(&id) {
            s.blockers.push(format!(
                "it is normalised (`{}`) and `{layer}` would not keep new features at the value the norm needs",
                found[0].1
            ));
        }
        for (_, name) in &found {
            let n = graph.find(name).expect("norms are nodes");
            if let Some(c) = graph.consumers(n).into_iter().find(|&c| {
                !matches!(
                    graph.g[c].op,
                    Op::Linear(_) | Op::TiedLinear(_) | Op::ClassPool
                )
            }) {
                s.blockers.push(format!(
                    "norm `{name}` feeds `{}` ({}), not a projection: the norm-aware fill gives the new features their columns in the projections a norm feeds (a post-norm stream, whose norms feed residual adds, cannot grow)",
                    graph.g[c].name,
                    graph.g[c].op.kind_name()
                ));
            }
        }
        s.norm = Some(kind);
    }
    layouts(graph, &mut spaces, &of);
    Spaces { spaces, of }
}

impl Space {
    /// Notes that a convolution with `groups` groups writes or reads the space.
    fn group(&mut self, groups: usize, name: &str) {
        if groups > 1 {
            let l = lcm(self.groups, groups);
            if l != self.groups {
                self.groups = l;
                self.grouped_by = Some(name.to_string());
            }
        }
    }
}

fn lcm(a: usize, b: usize) -> usize {
    let gcd = |mut a: usize, mut b: usize| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    a / gcd(a, b) * b
}

/// The runs of every space ([`Space::layout`]): a pad shortcut's output holds its
/// input's runs then its own zeros, a concatenation its inputs' runs in port order, its own channels, and the blockers that
/// follow: a grouped or normalised space holding other spaces' channels, and a fixed
/// space fixing the spaces whose channels it holds.
fn layouts(graph: &Graph, spaces: &mut [Space], of: &HashMap<NodeIndex, usize>) {
    let n = spaces.len();
    let mut done: Vec<Option<Vec<usize>>> = vec![None; n];
    let mut visiting = vec![false; n];
    for id in 0..n {
        layout_of(graph, spaces, of, id, &mut done, &mut visiting);
    }
    for (id, l) in done.into_iter().enumerate() {
        spaces[id].layout = l.expect("every layout is resolved");
    }
    let mut fixes: Vec<(usize, String)> = Vec::new();
    for s in spaces.iter() {
        let foreign: Vec<usize> = {
            let mut v: Vec<usize> = s.layout.iter().copied().filter(|&o| o != s.id).collect();
            v.dedup();
            v
        };
        if foreign.is_empty() {
            continue;
        }
        if !s.blockers.is_empty() {
            for &o in &foreign {
                fixes.push((
                    o,
                    format!(
                        "its channels are also channels of {} (through `{}`), which cannot be widened because {}",
                        s.describe(),
                        s.derived_by.as_deref().unwrap_or("?"),
                        s.blockers.join("; and ")
                    ),
                ));
            }
        }
    }
    for (o, m) in fixes {
        if !spaces[o].blockers.contains(&m) {
            spaces[o].blockers.push(m);
        }
    }
    for s in spaces.iter_mut() {
        let mixed = s.layout.iter().any(|&o| o != s.id);
        if mixed && s.groups > 1 {
            s.blockers.push(format!(
                "grouped convolution `{}` (groups {}) touches it, and its channels include other spaces' (through `{}`), so new channels would not split equally among the groups",
                s.grouped_by.as_deref().unwrap_or("?"),
                s.groups,
                s.derived_by.as_deref().unwrap_or("?")
            ));
        }
        if s.norm.is_some() && (mixed || s.groups > 1) {
            s.blockers.push(
                "it is normalised and grouped or concatenated, and no norm-aware fill keeps its statistics".into(),
            );
        }
    }
}

/// Resolves `spaces[id].layout` (and `own`) after the layouts of the spaces it holds.
fn layout_of(
    graph: &Graph,
    spaces: &mut [Space],
    of: &HashMap<NodeIndex, usize>,
    id: usize,
    done: &mut Vec<Option<Vec<usize>>>,
    visiting: &mut Vec<bool>,
) -> Vec<usize> {
    if let Some(l) = &done[id] {
        return l.clone();
    }
    let defs: Vec<NodeIndex> = spaces[id]
        .members
        .iter()
        .map(|m| m.node)
        .filter(|&m| matches!(graph.g[m].op, Op::ShortcutPad(_) | Op::Concat))
        .collect();
    if defs.is_empty() || visiting[id] {
        if visiting[id] {
            spaces[id].blockers.push(
                "its channels would hold its own channels through a shortcut or concatenation"
                    .into(),
            );
        }
        let s = &mut spaces[id];
        s.own = s.width;
        let l = vec![id; s.groups.max(1)];
        done[id] = Some(l.clone());
        return l;
    }
    visiting[id] = true;
    let mut found: Option<(Vec<usize>, usize, String)> = None;
    for d in defs {
        let mut runs = Vec::new();
        let mut held = 0;
        for src in graph.inputs(d) {
            let sid = of[&src];
            for o in layout_of(graph, spaces, of, sid, done, visiting) {
                held += spaces[o].run_width();
                runs.push(o);
            }
        }
        let width = spaces[id].width;
        let own = width.saturating_sub(held);
        if own > 0 {
            runs.push(id);
        }
        let name = graph.g[d].name.clone();
        match &found {
            None => found = Some((runs, own, name)),
            Some((r, _, first)) if *r != runs => {
                let m =
                    format!("`{first}` and `{name}` lie in it but hold different spaces' channels");
                spaces[id].blockers.push(m);
            }
            Some(_) => {}
        }
    }
    visiting[id] = false;
    let (runs, own, name) = found.expect("a derived space has a defining value");
    let s = &mut spaces[id];
    s.own = own;
    s.derived_by = Some(name);
    done[id] = Some(runs.clone());
    runs
}

/// Where a widened student keeps its teacher's channels, for the values where that is not
/// the leading block (a grouped space widens at the end of each group; a pad shortcut's
/// stream or a concatenation takes its parts' new channels at the end of each part): node
/// name to the student's feature indices (`cols` per channel after a flatten) holding the
/// teacher's features, in order. Values whose spaces do not match are left out (compared
/// on the leading block).
pub fn kept_channels(teacher: &Graph, student: &Graph) -> HashMap<String, Vec<usize>> {
    let (ts, ss) = (channel_spaces(teacher), channel_spaces(student));
    let mut out = HashMap::new();
    for t in &ts.spaces {
        if t.layout.len() <= 1 {
            continue;
        }
        for m in &t.members {
            // The student's space of the same value (rewrites may insert layers between
            // a space and the spaces it holds, so runs are matched by position).
            let Some(n) = student.find(&m.name) else {
                continue;
            };
            let s = &ss.spaces[ss.of[&n]];
            if s.layout.len() != t.layout.len() {
                continue;
            }
            let mut keep = Vec::with_capacity(t.width);
            let mut off = 0;
            let mut fits = true;
            for (&to, &so) in t.layout.iter().zip(&s.layout) {
                let (tw, sw) = (ts.spaces[to].run_width(), ss.spaces[so].run_width());
                fits &= (to == t.id) == (so == s.id) && tw <= sw;
                keep.extend(off..off + tw.min(sw));
                off += sw;
            }
            if !fits || keep.iter().enumerate().all(|(i, &k)| i == k) {
                continue;
            }
            let cols = m.cols.max(1);
            out.insert(
                m.name.clone(),
                keep.iter()
                    .flat_map(|&c| c * cols..(c + 1) * cols)
                    .collect(),
            );
        }
    }
    out
}

/// The text listing of `r2rc spaces`.
pub fn table(spaces: &Spaces) -> String {
    let list = |v: &[Named]| -> String {
        if v.is_empty() {
            "-".into()
        } else {
            v.iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let mut out = String::new();
    for s in &spaces.spaces {
        let state = if s.widenable() {
            "widenable".to_string()
        } else {
            format!("fixed: {}", spaces.why_fixed(s.id).join("; "))
        };
        out.push_str(&format!("{}: {state}\n", s.describe()));
        if s.layout.iter().any(|&o| o != s.id) || s.groups > 1 {
            // Its runs, owner by owner: `conv1 (8), own (8)`, `own (4 groups of 8)`.
            let mut runs: Vec<String> = Vec::new();
            let mut i = 0;
            while i < s.layout.len() {
                let o = s.layout[i];
                let n = s.layout[i..].iter().take_while(|&&x| x == o).count();
                let os = &spaces.spaces[o];
                let who = if o == s.id {
                    "own".to_string()
                } else {
                    format!("`{}`", os.label)
                };
                runs.push(if n > 1 {
                    format!("{who} ({n} groups of {})", os.run_width())
                } else {
                    format!("{who} ({})", os.run_width())
                });
                i += n;
            }
            out.push_str(&format!("  channels:  {}\n", runs.join(", ")));
        }
        let members: Vec<&str> = s.members.iter().map(|m| m.name.as_str()).collect();
        out.push_str(&format!("  members:   {}\n", members.join(", ")));
        out.push_str(&format!("  producers: {}\n", list(&s.producers)));
        out.push_str(&format!("  per-channel params: {}\n", list(&s.params)));
        let consumers: Vec<String> = s
            .consumers
            .iter()
            .map(|c| {
                if c.cols > 1 {
                    format!("{} ({} columns per channel)", c.name, c.cols)
                } else {
                    c.name.clone()
                }
            })
            .collect();
        out.push_str(&format!(
            "  consumers: {}\n",
            if consumers.is_empty() {
                "-".into()
            } else {
                consumers.join(", ")
            }
        ));
    }
    out
}
