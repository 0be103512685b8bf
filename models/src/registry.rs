//! The built-in variants: one line each. A variant's file declares its `Variant::NAME`
//! constant; listing it here makes it known by name to configs, the CLI and every test that
//! loops over [`Variant::ALL`] (parameter counts against the formula, gradients, reductions,
//! device checks, numerics fingerprints). Variants from outside the crate use
//! [`register`] instead. Name resolution lives here, at the top of the crate, since only the
//! registry knows every variant: [`Variant::from_name`], [`Variant::all`], [`Variant::with_role`]
//! and the deserialisation of a [`Variant`] (so of a config) by name.

use std::sync::RwLock;

use candle_core::Result;
use serde::{Deserialize, Deserializer};

use crate::variant::{Role, Variant, VariantDef};

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
        Variant::CANON,
        Variant::DCA,
        Variant::LAUREL,
    ];
}

impl Variant {
    /// A built-in ([`Variant::ALL`]) or [`register`]ed variant by name.
    pub fn from_name(s: &str) -> Option<Variant> {
        Variant::all().into_iter().find(|v| v.name() == s)
    }

    /// The built-in variants of one role, in registry order.
    pub fn with_role(role: Role) -> Vec<Variant> {
        Variant::ALL
            .iter()
            .copied()
            .filter(|v| v.def().role() == role)
            .collect()
    }

    /// Every known variant: the built-ins, then the registered ones in registration order.
    pub fn all() -> Vec<Variant> {
        let extra = registered().read().unwrap_or_else(|e| e.into_inner());
        Variant::ALL.iter().chain(extra.iter()).copied().collect()
    }
}

fn registered() -> &'static RwLock<Vec<Variant>> {
    static EXTRA: RwLock<Vec<Variant>> = RwLock::new(Vec::new());
    &EXTRA
}

/// Makes a variant defined outside this crate known by name (to [`Variant::from_name`], configs
/// and the harness). Registering the same definition (same name and type) twice is a no-op;
/// another variant under a taken name is an error.
pub fn register(v: Variant) -> Result<()> {
    let mut extra = registered().write().unwrap_or_else(|e| e.into_inner());
    match Variant::ALL
        .iter()
        .chain(extra.iter())
        .find(|o| o.name() == v.name())
    {
        Some(o) if same_type(o.def(), v.def()) => Ok(()),
        Some(_) => candle_core::bail!("a variant named `{}` already exists", v.name()),
        None => {
            extra.push(v);
            Ok(())
        }
    }
}

fn same_type(a: &dyn VariantDef, b: &dyn VariantDef) -> bool {
    let (a, b): (&dyn std::any::Any, &dyn std::any::Any) = (a, b);
    a.type_id() == b.type_id()
}

impl<'de> Deserialize<'de> for Variant {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Variant::from_name(&name).ok_or_else(|| {
            let known: Vec<&str> = Variant::all().iter().map(|v| v.name()).collect();
            serde::de::Error::custom(format!(
                "unknown variant `{name}`, expected one of {}",
                known.join(", ")
            ))
        })
    }
}
