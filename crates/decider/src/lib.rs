//! The shape every service's pure domain has, and the kit its specifications are written with.
//!
//! A [`Decider`] decides what an input changes (`decide`), applies one change to
//! the state (`evolve`), and says which public event a change publishes
//! (`published`). All three are pure and synchronous: no I/O, no clock — outside
//! facts come in through the input or the context.
//!
//! [`spec`] turns that shape into executable specifications:
//!
//! ```ignore
//! given::<Checkout>(ctx, [placed()]).when(captured()).then(vec![confirmed()]);
//! ```

use std::fmt::Debug;

/// A pure state machine: one aggregate's rules.
pub trait Decider {
    type State: Clone + Default + PartialEq + Debug;
    type Input;
    type Change;
    type Refusal: PartialEq + Debug;
    type Ctx: Clone;
    /// What the outside world sees of a change.
    type Event: PartialEq + Debug;

    /// What `input` changes; an empty list means nothing to do, `Err` that it must be refused.
    fn decide(
        state: &Self::State,
        input: &Self::Input,
        ctx: &Self::Ctx,
    ) -> Result<Vec<Self::Change>, Self::Refusal>;

    /// Applies one change.
    fn evolve(state: &mut Self::State, change: &Self::Change);

    /// The public event a change publishes, if any.
    fn published(state_after: &Self::State, change: &Self::Change) -> Option<Self::Event>;

    /// Evolves `state` through `changes` in order and returns the events to publish.
    fn apply(state: &mut Self::State, changes: &[Self::Change]) -> Vec<Self::Event> {
        changes
            .iter()
            .filter_map(|change| {
                Self::evolve(state, change);
                Self::published(state, change)
            })
            .collect()
    }
}

pub mod spec {
    //! Given/when/then specifications for any [`Decider`].

    use super::Decider;

    /// The state built from past inputs, and the context of the next one.
    pub struct Given<D: Decider> {
        pub state: D::State,
        pub ctx: D::Ctx,
    }

    /// Builds the state by deciding and applying each input; a refused input is a broken spec.
    pub fn given<D: Decider>(ctx: D::Ctx, inputs: impl IntoIterator<Item = D::Input>) -> Given<D> {
        Given::from_state(D::State::default(), ctx).and_given(inputs)
    }

    impl<D: Decider> Given<D> {
        /// Starts from a prepared state.
        pub fn from_state(state: D::State, ctx: D::Ctx) -> Given<D> {
            Given { state, ctx }
        }

        /// Applies more past inputs.
        pub fn and_given(mut self, inputs: impl IntoIterator<Item = D::Input>) -> Given<D> {
            for input in inputs {
                match D::decide(&self.state, &input, &self.ctx) {
                    Ok(changes) => {
                        D::apply(&mut self.state, &changes);
                    }
                    Err(refusal) => panic!("a given input was refused: {refusal:?}"),
                }
            }
            self
        }

        /// Decides the next input in another context (a later time, say).
        pub fn with_ctx(mut self, ctx: D::Ctx) -> Given<D> {
            self.ctx = ctx;
            self
        }

        pub fn when(self, input: D::Input) -> Then<D> {
            let before = self.state.clone();
            let mut state = self.state;
            let result = D::decide(&state, &input, &self.ctx).map(|c| D::apply(&mut state, &c));
            Then {
                before,
                state,
                result,
            }
        }
    }

    /// What came of the input: the events published, or the refusal, and the state after.
    pub struct Then<D: Decider> {
        pub before: D::State,
        pub state: D::State,
        pub result: Result<Vec<D::Event>, D::Refusal>,
    }

    impl<D: Decider> Then<D> {
        /// Exactly these events were published.
        #[track_caller]
        pub fn then(self, expected: Vec<D::Event>) -> Then<D> {
            assert_eq!(self.result, Ok(expected));
            self
        }

        /// Nothing published and the state untouched.
        #[track_caller]
        pub fn then_nothing_happens(self) -> Then<D> {
            assert_eq!(self.result, Ok(vec![]));
            assert_eq!(self.state, self.before);
            self
        }

        /// Refused, and the state untouched.
        #[track_caller]
        pub fn then_refused(self, refusal: D::Refusal) -> Then<D> {
            assert_eq!(self.result, Err(refusal));
            assert_eq!(self.state, self.before);
            self
        }

        /// Any further check on the state after.
        #[track_caller]
        pub fn and(self, check: impl FnOnce(&D::State)) -> Then<D> {
            check(&self.state);
            self
        }
    }
}
