//! The built-in variants: one line each. A variant's file declares its `Variant::NAME`
//! constant; listing it here makes it known by name to configs, the CLI and every test that
//! loops over [`Variant::ALL`] (parameter counts against the formula, gradients, reductions,
//! device checks, numerics fingerprints). Variants from outside the crate use
//! [`crate::register`] instead.

use crate::variant::Variant;

impl Variant {
    pub const ALL: &'static [Variant] = &[
        Variant::LLAMA,
        Variant::LIME,
        Variant::LIME_DYNAMIC,
        Variant::LIME_AVG,
        Variant::LIME_LAST_2,
        Variant::LIME_FIRST_2,
        Variant::LIME_SAME_HEAD,
        Variant::LIME_PER_DIM,
        Variant::LIME_RANDOM_INIT,
        Variant::DENSEFORMER,
        Variant::HYPER,
        Variant::HYPER_STATIC,
        Variant::RESFORMER,
        Variant::ATTNRES,
        Variant::ATTNRES_BLOCK,
        Variant::MUDDFORMER,
        Variant::MHC,
    ];
}
