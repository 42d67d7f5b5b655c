//! In-memory helpers over the streaming reader: [`parse_to_tree`] (tests and debugging) and
//! [`NullVisitor`] (validation only).

use std::io::Read;

use super::reader::{NodeId, ParseError, VisitError, Visitor, parse_buf};
use super::writer::Node;

/// Parses an in-memory NAR (limit = its length) into a [`Node`] tree. A test and debug helper:
/// it holds every file's contents in memory.
pub fn parse_to_tree(bytes: &[u8]) -> Result<Node, ParseError> {
    let mut builder = TreeBuilder::default();
    parse_buf(bytes, bytes.len() as u64, &mut builder)?;
    builder.finish().map_err(ParseError::Visitor)
}

/// A visitor that accepts everything and reads nothing (the parser drains file contents).
#[derive(Debug, Default, Clone, Copy)]
pub struct NullVisitor;

impl Visitor for NullVisitor {
    fn directory(&mut self, _: NodeId, _: Option<(NodeId, &[u8])>) -> Result<(), VisitError> {
        Ok(())
    }

    fn file(
        &mut self,
        _: NodeId,
        _: Option<(NodeId, &[u8])>,
        _: bool,
        _: u64,
        _: &mut dyn Read,
    ) -> Result<(), VisitError> {
        Ok(())
    }

    fn symlink(
        &mut self,
        _: NodeId,
        _: Option<(NodeId, &[u8])>,
        _: &[u8],
    ) -> Result<(), VisitError> {
        Ok(())
    }
}

/// Builds a [`Node`] tree from visitor callbacks, without recursion.
#[derive(Default)]
struct TreeBuilder {
    /// Indexed by [`NodeId`]; ids arrive densely in order.
    nodes: Vec<Slot>,
}

enum Slot {
    Leaf(Node),
    Dir(Vec<(Vec<u8>, NodeId)>),
}

impl TreeBuilder {
    fn add(
        &mut self,
        id: NodeId,
        parent: Option<(NodeId, &[u8])>,
        slot: Slot,
    ) -> Result<(), VisitError> {
        if id as usize != self.nodes.len() {
            return Err(format!("node id {id} out of sequence").into());
        }
        if let Some((p, name)) = parent {
            match self.nodes.get_mut(p as usize) {
                Some(Slot::Dir(children)) => children.push((name.to_vec(), id)),
                _ => return Err(format!("parent {p} of node {id} is not a directory").into()),
            }
        }
        self.nodes.push(slot);
        Ok(())
    }

    /// Assembles the tree bottom-up: children always have larger ids than their parent.
    fn finish(self) -> Result<Node, VisitError> {
        let mut built: Vec<Option<Node>> = Vec::with_capacity(self.nodes.len());
        built.resize_with(self.nodes.len(), || None);
        for (id, slot) in self.nodes.into_iter().enumerate().rev() {
            let node = match slot {
                Slot::Leaf(node) => node,
                Slot::Dir(children) => Node::Directory(
                    children
                        .into_iter()
                        .map(|(name, child)| {
                            built
                                .get_mut(child as usize)
                                .and_then(Option::take)
                                .map(|node| (name, node))
                                .ok_or_else(|| VisitError::from(format!("node {child} missing")))
                        })
                        .collect::<Result<_, _>>()?,
                ),
            };
            built[id] = Some(node);
        }
        built.into_iter().next().flatten().ok_or_else(|| "nar has no root node".into())
    }
}

impl Visitor for TreeBuilder {
    fn directory(&mut self, id: NodeId, parent: Option<(NodeId, &[u8])>) -> Result<(), VisitError> {
        self.add(id, parent, Slot::Dir(Vec::new()))
    }

    fn file(
        &mut self,
        id: NodeId,
        parent: Option<(NodeId, &[u8])>,
        executable: bool,
        _size: u64,
        contents: &mut dyn Read,
    ) -> Result<(), VisitError> {
        let mut bytes = Vec::new();
        contents.read_to_end(&mut bytes)?;
        self.add(id, parent, Slot::Leaf(Node::File { executable, contents: bytes }))
    }

    fn symlink(
        &mut self,
        id: NodeId,
        parent: Option<(NodeId, &[u8])>,
        target: &[u8],
    ) -> Result<(), VisitError> {
        self.add(id, parent, Slot::Leaf(Node::Symlink { target: target.to_vec() }))
    }
}
