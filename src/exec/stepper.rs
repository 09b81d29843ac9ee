//! Running a network one step at a time, for proofs that compare two networks value by
//! value as they go ([`crate::prove`]): every value is handed to the caller as soon as it
//! is computed and freed once the caller and its consumers are done with it, so a proof
//! holds a few values at a time instead of every value of both networks. Steps may be
//! skipped, their values given from elsewhere (the other network's, when both compute it
//! from the same weights by the same code). Nothing is fused: every value exists.

use std::sync::Arc;

use ndarray::ArrayD;

use super::{eval, Executor, Mode, Tensor};
use crate::error::{Error, Result};
use crate::ir::NodeIndex;

/// A forward pass in progress.
pub struct Stepper<'e, T> {
    exec: &'e Executor<T>,
    mode: Mode,
    vals: Vec<Option<Arc<Tensor<T>>>>,
    /// Readers of each value that have yet to run.
    left: Vec<usize>,
    skip: Vec<bool>,
    /// The next position to consider.
    next: usize,
}

impl<T: crate::exec::Float> Executor<T> {
    /// The steps' nodes and names, in run order (the positions a [`Stepper`] uses).
    pub fn steps(&self) -> impl Iterator<Item = (NodeIndex, &str)> {
        self.steps.iter().map(|s| (s.node, s.name.as_str()))
    }

    /// Positions of the inputs of the step at `i`, in port order.
    pub fn step_inputs(&self, i: usize) -> &[usize] {
        &self.steps[i].inputs
    }
}

impl<'e, T: crate::exec::Float> Stepper<'e, T> {
    /// A pass of `exec` on `input` in `mode`; the steps at positions where `skip` is true
    /// are not run (a running step that reads one gets its value from [`Stepper::give`]).
    pub fn new(
        exec: &'e Executor<T>,
        input: ArrayD<T>,
        mode: Mode,
        skip: Vec<bool>,
    ) -> Result<Stepper<'e, T>> {
        let input = Tensor::from_array(input);
        exec.check_input(&input)?;
        let n = exec.steps.len();
        let mut left = vec![0; n];
        for (i, s) in exec.steps.iter().enumerate() {
            if !skip[i] {
                s.inputs.iter().for_each(|&j| left[j] += 1);
            }
        }
        let mut vals = vec![None; n];
        vals[exec.input] = Some(Arc::new(input));
        Ok(Stepper {
            exec,
            mode,
            vals,
            left,
            skip,
            next: 0,
        })
    }

    /// The value of the skipped step at `i`, for the running steps that read it.
    pub fn give(&mut self, i: usize, v: Arc<Tensor<T>>) {
        if self.left[i] > 0 {
            self.vals[i] = Some(v);
        }
    }

    /// The position of the next step to run (skipped steps passed over).
    fn upcoming(&mut self) -> Option<usize> {
        while self.next < self.skip.len() && self.skip[self.next] {
            self.next += 1;
        }
        (self.next < self.skip.len()).then_some(self.next)
    }

    /// Whether every step has run.
    pub fn done(&mut self) -> bool {
        self.upcoming().is_none()
    }

    /// Whether the next step can run now: its inputs are computed or given.
    pub fn ready(&mut self) -> bool {
        match self.upcoming() {
            None => false,
            Some(i) => self.exec.steps[i]
                .inputs
                .iter()
                .all(|&j| self.vals[j].is_some()),
        }
    }

    /// Runs the next step (the input's "step" hands over the input) and returns its
    /// position and value; `None` when every step has run.
    pub fn step(&mut self) -> Result<Option<(usize, Arc<Tensor<T>>)>> {
        let Some(i) = self.upcoming() else {
            return Ok(None);
        };
        self.next += 1;
        let step = &self.exec.steps[i];
        if i == self.exec.input {
            let v = self.vals[i].clone().expect("the input is placed first");
            if self.left[i] == 0 {
                self.vals[i] = None;
            }
            return Ok(Some((i, v)));
        }
        let mut args = Vec::with_capacity(step.inputs.len());
        for &j in &step.inputs {
            self.left[j] -= 1;
            let v = if self.left[j] == 0 {
                self.vals[j].take()
            } else {
                self.vals[j].clone()
            };
            args.push(v.ok_or_else(|| {
                Error::usage(
                    format!(
                        "layer `{}` runs before its input `{}` has a value",
                        step.name, self.exec.steps[j].name
                    ),
                    None,
                )
            })?);
        }
        let out = eval(step, args, self.mode, false, None, false)
            .map_err(|m| Error::usage(format!("layer `{}`: {m}", step.name), None))?;
        let out = Arc::new(out);
        if self.left[i] > 0 {
            self.vals[i] = Some(out.clone());
        }
        Ok(Some((i, out)))
    }
}
