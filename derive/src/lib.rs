//! Derive macros for `snapheap::Persist` and `snapheap::GlobalPersist`. Use them through the
//! `snapheap` crate (feature `derive`, on by default): `#[derive(snapheap::Persist)]`.
//!
//! For `struct S<T> { a: A, b: B }` the `Persist` derive emits
//!
//! ```text
//! unsafe impl<T: Persist> Persist for S<T> {}
//! unsafe impl<T: GlobalPersist> GlobalPersist for S<T> {}
//! const _: () = {
//!     fn check<T: Persist>(_: &S<T>) { assert_persist::<A>(); assert_persist::<B>(); }
//!     fn check_global<T: GlobalPersist>(_: &S<T>) { assert_global::<A>(); assert_global::<B>(); }
//! };
//! ```
//!
//! The impls are bounded on the type parameters only (as std's derives are), so recursive
//! types such as `struct Node { kids: Vec<Node> }` work; the check functions prove, for every
//! choice of parameters satisfying those bounds, that every field's type implements the
//! trait. They are type-checked but never called, and a failing field is reported at its
//! type's span with the trait's `on_unimplemented` message, which names the type. Enums check
//! the fields of every variant. Unions (which field is live is not known) and
//! `#[repr(packed)]` types (GlobalHeap's reclaim finds pointers only in aligned words, and
//! fields of packed structs cannot be borrowed) are refused with a compile error.

use proc_macro::TokenStream;
use proc_macro2::{Group, Span, TokenStream as TokenStream2, TokenTree};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{parse_macro_input, Data, DeriveInput, Error, GenericParam, Generics, Type};

/// Implements `snapheap::Persist` (valid in a `Heap<T>` root) and `snapheap::GlobalPersist`
/// (valid in a `GlobalHeap` root) when every field's type implements them.
#[proc_macro_derive(Persist)]
pub fn derive_persist(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand(&input, true).unwrap_or_else(|e| e.to_compile_error()).into()
}

/// Implements `snapheap::GlobalPersist` (valid in a `GlobalHeap` root) when every field's type
/// implements it. For types that are also valid in a `Heap<T>` root derive `Persist` instead,
/// which implements both.
#[proc_macro_derive(GlobalPersist)]
pub fn derive_global_persist(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand(&input, false).unwrap_or_else(|e| e.to_compile_error()).into()
}

fn expand(input: &DeriveInput, heap: bool) -> syn::Result<TokenStream2> {
    let which = if heap { "Persist" } else { "GlobalPersist" };
    refuse_packed(input, which)?;
    let fields: Vec<&Type> = match &input.data {
        Data::Struct(s) => s.fields.iter().map(|f| &f.ty).collect(),
        Data::Enum(e) => e.variants.iter().flat_map(|v| v.fields.iter().map(|f| &f.ty)).collect(),
        Data::Union(u) => {
            return Err(Error::new(
                u.union_token.span(),
                format!(
                    "#[derive({which})] does not support unions: which field is live is not known, so \
                     it cannot be checked; if every field is valid after a restart, write \
                     `unsafe impl snapheap::{which} for ...` (see the trait's docs for the rules)"
                ),
            ))
        }
    };
    let name = &input.ident;
    let (_, ty_generics, _) = input.generics.split_for_impl();
    let self_ty = quote!(#name #ty_generics);
    let fields: Vec<(Span, TokenStream2)> = fields
        .iter()
        .map(|t| (t.span(), replace_self(quote!(#t), &self_ty)))
        .collect();

    let mut out = emit(
        input,
        &self_ty,
        &fields,
        quote!(::snapheap::GlobalPersist),
        quote!(assert_global_persist),
    );
    if heap {
        out.extend(emit(
            input,
            &self_ty,
            &fields,
            quote!(::snapheap::Persist),
            quote!(assert_persist),
        ));
    }
    Ok(out)
}

/// One impl of `trait_path` for the input type, bounded on its type parameters, and a check
/// function proving that the fields' types implement it under the same bounds.
fn emit(
    input: &DeriveInput,
    self_ty: &TokenStream2,
    fields: &[(Span, TokenStream2)],
    trait_path: TokenStream2,
    assert_fn: TokenStream2,
) -> TokenStream2 {
    let generics = bounded(&input.generics, &trait_path);
    let (impl_generics, _, where_clause) = generics.split_for_impl();
    let checks = fields.iter().map(|(span, ty)| {
        quote_spanned! {*span=>
            ::snapheap::__private::#assert_fn::<#ty>();
        }
    });
    // The unused `&Self` argument gives the function the struct's implied bounds
    // (`T: 'a` for a field `&'a T`), which a free function would otherwise lack.
    quote! {
        // SAFETY: every field's type implements the trait whenever the type parameters do
        // (proved by the check function below), and the type is neither a union nor packed.
        #[automatically_derived]
        unsafe impl #impl_generics #trait_path for #self_ty #where_clause {}

        const _: () = {
            #[allow(dead_code, unused_qualifications, clippy::all)]
            fn __snapheap_check_fields #impl_generics (_: &#self_ty) #where_clause {
                #(#checks)*
            }
        };
    }
}

/// `generics` with `trait_path` added to the bounds of every type parameter.
fn bounded(generics: &Generics, trait_path: &TokenStream2) -> Generics {
    let mut g = generics.clone();
    for p in g.params.iter_mut() {
        if let GenericParam::Type(t) = p {
            t.bounds
                .push(syn::parse2(trait_path.clone()).expect("a trait path is a bound"));
        }
    }
    g
}

fn refuse_packed(input: &DeriveInput, which: &str) -> syn::Result<()> {
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("repr")) {
        let mut packed = false;
        attr.parse_nested_meta(|m| {
            if m.path.is_ident("packed") {
                packed = true;
            }
            // Skip arguments such as `packed(2)` or `align(8)`.
            if m.input.peek(syn::token::Paren) {
                let _content;
                syn::parenthesized!(_content in m.input);
            }
            Ok(())
        })?;
        if packed {
            return Err(Error::new_spanned(
                attr,
                format!(
                    "#[derive({which})] does not support #[repr(packed)]: GlobalHeap's reclaim finds \
                     pointers only in aligned words, so a pointer at an unaligned offset would not \
                     keep its block alive; remove `packed`, or for plain data without pointers write \
                     `unsafe impl snapheap::{which} for ...` (see the trait's docs for the rules)"
                ),
            ));
        }
    }
    Ok(())
}

/// Replaces the keyword `Self` in a field's type by the type itself (the check function is a
/// free function, where `Self` means nothing).
fn replace_self(tokens: TokenStream2, self_ty: &TokenStream2) -> TokenStream2 {
    tokens
        .into_iter()
        .flat_map(|tt| -> Vec<TokenTree> {
            match tt {
                TokenTree::Ident(i) if i == "Self" => respan(self_ty.clone(), i.span()).into_iter().collect(),
                TokenTree::Group(g) => {
                    let mut ng = Group::new(g.delimiter(), replace_self(g.stream(), self_ty));
                    ng.set_span(g.span());
                    vec![TokenTree::Group(ng)]
                }
                other => vec![other],
            }
        })
        .collect()
}

fn respan(tokens: TokenStream2, span: Span) -> TokenStream2 {
    tokens
        .into_iter()
        .map(|mut tt| {
            if let TokenTree::Group(g) = &tt {
                let mut ng = Group::new(g.delimiter(), respan(g.stream(), span));
                ng.set_span(span);
                tt = TokenTree::Group(ng);
            } else {
                tt.set_span(span);
            }
            tt
        })
        .collect()
}
