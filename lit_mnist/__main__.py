from lit_mnist.cli import main

main()
