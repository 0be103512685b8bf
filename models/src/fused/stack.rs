//! LIMe's in-place K|V stacks.

use super::*;

// ------------------------------------------------------------------------------------------------
// LIMe's K|V stack: the buffer of every layer's pre-RoPE K|V rows without concatenation.
//
// With `Tensor::cat`, layer l copies the whole buffer of layers 0..l (O(L²) copies per step) and
// its backward splits and re-adds those gradients (O(L²) more); the K|V concatenation, permutes
// and narrows around it cost a few more copies per layer each way. Here one pass owns two growing
// stacks (keys, values), each (S, N) f32 with row s = (layer, kv head) and N = B·T·d_h columns
// ordered (b, t, c). [`stack_route`] takes a layer's k or v in the projection's layout
// (B,T,R,d_h), appends its R rows, and returns the routed tensor directly in attention's layout
// (B,R,T,d_h): W_l · stack for l ≥ 1, the layer's own rows for l = 0. Autograd sees each op with
// only the layer's own k or v as input, so the gradient that layer l sends to the rows of an
// earlier layer j is deposited in the stack's gradient rows, and op j adds it to its own input
// gradient. That is exact because
// backward visits op l before op j whenever l > j (op l consumes, through the residual stream, the
// output of op j): by the time op j runs, every later layer has deposited. Op j then zeroes the
// rows it collected, so a second backward over the same graph starts from zero again (tested);
// the composed `cat` path stays the reference (f64, GPU) and the two are tested equal.
// ------------------------------------------------------------------------------------------------

/// One forward pass's K|V stack (see above).
#[derive(Debug)]
pub struct KvStack {
    inner: std::sync::Mutex<StackInner>,
}

#[derive(Debug)]
struct StackInner {
    /// Row-major (rows, n).
    data: Vec<f32>,
    /// Gradient rows deposited by later layers (allocated at the first backward).
    grad: Vec<f32>,
    /// Row width: B·T·d_h.
    n: usize,
}

impl KvStack {
    /// A stack that will hold up to `rows` rows of width `n` without reallocating.
    pub fn with_capacity(rows: usize, n: usize) -> Self {
        Self {
            inner: std::sync::Mutex::new(StackInner {
                data: Vec::with_capacity(rows * n),
                grad: Vec::new(),
                n,
            }),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, StackInner>> {
        self.inner
            .lock()
            .map_err(|_| candle_core::Error::Msg("lime stack: poisoned lock".into()))
    }
}

/// The (B, T, R, d_h) shape of one layer's k or v.
#[derive(Clone, Copy, Debug)]
struct Btrd {
    b: usize,
    t: usize,
    r: usize,
    d: usize,
}

impl Btrd {
    fn of(shape: &Shape) -> Result<Self> {
        let (b, t, r, d) = shape.dims4()?;
        Ok(Self { b, t, r, d })
    }
    /// Stack columns: N = B·T·d_h.
    fn n(&self) -> usize {
        self.b * self.t * self.d
    }
}

impl StackInner {
    /// Rows stacked so far.
    fn rows(&self) -> usize {
        self.data.len() / self.n.max(1)
    }

    /// Appends x (B,T,R,d_h) as rows `before..before + R` (row r = head r over (b, t, c)).
    fn push(&mut self, before: usize, x: &[f32], s: Btrd) -> Result<()> {
        let n = s.n();
        if self.rows() != before || self.n != n {
            candle_core::bail!(
                "lime stack: appending {} rows of {n} at row {before}, stack has {} rows of {}",
                s.r,
                self.rows(),
                self.n
            );
        }
        let start = self.data.len();
        self.data.resize(start + s.r * n, 0.0);
        let rows = &mut self.data[start..];
        for (bt, src) in x.chunks_exact(s.r * s.d).enumerate() {
            for (h, v) in src.chunks_exact(s.d).enumerate() {
                rows[h * n + bt * s.d..h * n + (bt + 1) * s.d].copy_from_slice(v);
            }
        }
        Ok(())
    }
}

/// The first R rows of a stack-layout matrix (.., N) → (B,R,T,d_h).
fn rows_to_brtd(src: &[f32], s: Btrd) -> Vec<f32> {
    let (n, td) = (s.n(), s.t * s.d);
    // SAFETY: the chunks cover the output, and each is written whole.
    unsafe {
        written(s.b * s.r * td, |out| {
            for (bh, o) in out.chunks_exact_mut(td).enumerate() {
                let (bi, h) = (bh / s.r, bh % s.r);
                let at = h * n + bi * td;
                for (d, x) in o.iter_mut().zip(&src[at..at + td]) {
                    d.write(*x);
                }
            }
        })
    }
}

/// A stack-layout matrix (R, N) plus rows `dep_row0..dep_row0 + R` of `dep` → (B,T,R,d_h).
fn rows_to_btrd(src: &[f32], dep: &[f32], dep_row0: usize, s: Btrd) -> Vec<f32> {
    let n = s.n();
    // SAFETY: the chunks cover the output, and each element is written.
    unsafe {
        written(s.b * s.t * s.r * s.d, |out| {
            for (bt, o) in out.chunks_exact_mut(s.r * s.d).enumerate() {
                for (h, v) in o.chunks_exact_mut(s.d).enumerate() {
                    let (at, dat) = (h * n + bt * s.d, (dep_row0 + h) * n + bt * s.d);
                    for ((a, x), d) in v
                        .iter_mut()
                        .zip(&src[at..at + s.d])
                        .zip(&dep[dat..dat + s.d])
                    {
                        a.write(x + d);
                    }
                }
            }
        })
    }
}

/// (B,R,T,d_h) → stack layout (R, N).
fn brtd_to_rows(g: &[f32], s: Btrd) -> Vec<f32> {
    let (n, td) = (s.n(), s.t * s.d);
    // SAFETY: the B·R source chunks land on disjoint blocks that tile the (R, N) output.
    unsafe {
        written(s.r * n, |out| {
            for (bh, src) in g.chunks_exact(td).enumerate() {
                let (bi, h) = (bh / s.r, bh % s.r);
                let at = h * n + bi * td;
                for (d, x) in out[at..at + td].iter_mut().zip(src) {
                    d.write(*x);
                }
            }
        })
    }
}

/// One layer's routing of its k or v through a stack: layer 0 (`before == 0`, no W) only
/// appends; layer l ≥ 1 appends at row `before = l·R` and mixes with W (R, (l+1)·R).
struct StackRoute {
    stack: std::sync::Arc<KvStack>,
    before: usize,
}

impl StackRoute {
    /// Forward: append x (B,T,R,d_h), return the routed (B,R,T,d_h).
    fn forward(&self, w: Option<&[f32]>, x: &[f32], shape: &Shape) -> Result<(CpuStorage, Shape)> {
        let s = Btrd::of(shape)?;
        let mut st = self.stack.lock()?;
        st.push(self.before, x, s)?;
        let out_shape = Shape::from((s.b, s.r, s.t, s.d));
        let Some(w) = w else {
            return Ok((CpuStorage::F32(rows_to_brtd(&st.data, s)), out_shape));
        };
        let (n, td, rows) = (s.n(), s.t * s.d, st.rows());
        if w.len() != s.r * rows {
            candle_core::bail!("lime stack: W has {} entries for {} x {rows}", w.len(), s.r);
        }
        let x = &st.data[..rows * n];
        // Not zeroed: gemm (no accumulation, k = rows > 0) writes every element of each batch
        // row's block, and the blocks tile `out`; the length is set after the jobs.
        let mut out: Vec<f32> = Vec::with_capacity(s.b * s.r * td);
        let o = Out(out.as_mut_ptr());
        // Per batch row b: out[b] (R × T·d_h) = W (R × S) · stack[:, b block] (S × T·d_h).
        let job = |bi: usize| {
            // SAFETY: batch row bi of `out` belongs to this job alone.
            unsafe {
                mm_raw(
                    s.r,
                    td,
                    rows,
                    o.at(bi * s.r * td),
                    td,
                    false,
                    w,
                    rows,
                    1,
                    &x[bi * td..],
                    n,
                    1,
                    1.0,
                )
            };
        };
        if s.b * s.r * td * rows < PAR_MIN {
            (0..s.b).for_each(job);
        } else {
            (0..s.b).into_par_iter().for_each(job);
        }
        // SAFETY: every element was written by the jobs above (see the allocation).
        unsafe { out.set_len(s.b * s.r * td) };
        Ok((CpuStorage::F32(out), out_shape))
    }

    /// Backward: dW (R × S) if W is given, and dx (B,T,R,d_h) including the deposits of later
    /// layers; deposits this layer's gradient for the earlier rows.
    fn backward(
        &self,
        w: Option<&[f32]>,
        g: &[f32],
        s: Btrd,
    ) -> Result<(Option<Vec<f32>>, Vec<f32>)> {
        let mut guard = self.stack.lock()?;
        let st = &mut *guard;
        let (n, td, before) = (s.n(), s.t * s.d, self.before);
        let rows = before + s.r;
        if st.grad.len() < st.data.len() {
            st.grad.resize(st.data.len(), 0.0);
        }
        let Some(w) = w else {
            // dx = g (this layer's rows, read back to (B,T,R,d_h)) + the deposits for them.
            let g_rows = brtd_to_rows(g, s);
            let dx = rows_to_btrd(&g_rows, &st.grad, 0, s);
            st.grad[..s.r * n].fill(0.0); // collected: a later backward starts from zero
            return Ok((None, dx));
        };
        let x = &st.data[..rows * n];
        let dep = Out(st.grad.as_mut_ptr());
        // W[:, before..]ᵀ G in stack layout; not zeroed: each job's gemm (no accumulation,
        // k = R > 0) writes its batch block of all R rows, and the blocks tile the rows.
        let mut own: Vec<f32> = Vec::with_capacity(s.r * n);
        let o = Out(own.as_mut_ptr());
        let parts: Vec<Vec<f32>> = (0..s.b)
            .into_par_iter()
            .map(|bi| {
                let gb = &g[bi * s.r * td..]; // G_b (R × T·d_h), row stride T·d_h
                let col = bi * td;
                // SAFETY (both): batch block bi of these stack-layout rows belongs to this job.
                unsafe {
                    // Earlier layers' rows: grad[0..before, block] += W[:, ..before]ᵀ G_b.
                    mm_raw(
                        before,
                        td,
                        s.r,
                        dep.at(col),
                        n,
                        true,
                        w,
                        1,
                        rows,
                        gb,
                        td,
                        1,
                        1.0,
                    );
                    // This layer's rows: own[:, block] = W[:, before..]ᵀ G_b.
                    mm_raw(
                        s.r,
                        td,
                        s.r,
                        o.at(col),
                        n,
                        false,
                        &w[before..],
                        1,
                        rows,
                        gb,
                        td,
                        1,
                        1.0,
                    );
                }
                // dW partial = G_b (R × T·d_h) · X_bᵀ (T·d_h × S).
                let mut dw = vec![0f32; s.r * rows];
                mm(
                    s.r,
                    rows,
                    td,
                    &mut dw,
                    false,
                    gb,
                    td,
                    1,
                    &x[col..],
                    1,
                    n,
                    1.0,
                );
                dw
            })
            .collect();
        // SAFETY: every element was written by the jobs above (see the allocation).
        unsafe { own.set_len(s.r * n) };
        let dx = rows_to_btrd(&own, &st.grad, before, s);
        st.grad[before * n..rows * n].fill(0.0); // collected: a later backward starts from zero
        Ok((Some(sum_partials(&parts, s.r * rows)), dx))
    }
}

/// Layer 0.
struct StackRoute0(StackRoute);

impl CustomOp1 for StackRoute0 {
    fn name(&self) -> &'static str {
        "lime-stack-route"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        self.0.forward(None, slice(s, l)?, l.shape())
    }

    fn bwd(&self, x: &Tensor, _out: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let s = Btrd::of(x.shape())?;
        let (_, dx) = with_host([g], |[hg]| self.0.backward(None, hg, s))?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

impl CustomOp2 for StackRoute {
    fn name(&self) -> &'static str {
        "lime-stack-route"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward(Some(slice(s1, l1)?), slice(s2, l2)?, l2.shape())
    }

    fn bwd(
        &self,
        w: &Tensor,
        x: &Tensor,
        _out: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let s = Btrd::of(x.shape())?;
        let (dw, dx) = with_host([w, g], |[hw, hg]| self.backward(Some(hw), hg, s))?;
        Ok((
            dw.map(|d| Tensor::from_vec(d, w.shape(), w.device()))
                .transpose()?,
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
        ))
    }
}

/// Routes one layer's k or v (B,T,R,d_h) through a pass's stack: returns (B,R,T,d_h), the
/// layer's own heads for layer 0 (`w = None`), W (R, (l+1)·R) · stack for layer l ≥ 1.
/// f32 CPU only ([`usable`]); layers must come in order.
pub fn stack_route(
    stack: &std::sync::Arc<KvStack>,
    w: Option<&Tensor>,
    x: &Tensor,
) -> Result<Tensor> {
    let x = x.contiguous()?;
    let r = x.dim(2)?;
    match w {
        None => x.apply_op1(StackRoute0(StackRoute {
            stack: stack.clone(),
            before: 0,
        })),
        Some(w) => {
            let before = w.dim(1)?.saturating_sub(r);
            w.contiguous()?.apply_op2(
                &x,
                StackRoute {
                    stack: stack.clone(),
                    before,
                },
            )
        }
    }
}

/// The key and value stacks of one LIMe forward pass (the fused backend's buffer).
#[derive(Debug)]
pub struct KvStacks {
    k: std::sync::Arc<KvStack>,
    v: std::sync::Arc<KvStack>,
}

impl KvStacks {
    /// Routes one layer's k and v (B,T,R,d_h) through the pass's stacks (created at layer 0,
    /// `w = None`, with room for `rows` = L·R rows): returns (K_l, V_l), each (B,R,T,d_h), the
    /// same numbers as the concatenated buffer of `lime.rs` with `W · buffer`.
    pub fn route(
        stacks: &mut Option<KvStacks>,
        rows: usize,
        w: Option<&Tensor>,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        require("lime stack", &[k, v])?;
        if w.is_none() {
            let (b, t, _, dh) = k.dims4()?;
            let new = || std::sync::Arc::new(KvStack::with_capacity(rows, b * t * dh));
            *stacks = Some(KvStacks { k: new(), v: new() });
        }
        let Some(s) = stacks else {
            candle_core::bail!("lime stack: a layer routed before layer 0");
        };
        Ok((stack_route(&s.k, w, k)?, stack_route(&s.v, w, v)?))
    }
}
